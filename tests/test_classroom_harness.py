"""The class test's own logic (tests/classroom), without a hub: what counts as one learner
reaching another, and what the simulated learner sends."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "classroom"))

from learner import notebook_cells  # noqa: E402
from monitor import Observations, crossings  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_crossings_name_writes_and_connections_beyond_a_learners_own() -> None:
    homes = {"ann": Path("/class/home/ann"), "bob": Path("/class/home/bob")}
    seen = Observations()
    seen.written["ann"] |= {"/class/home/ann/.cache/labsupport/rag/chroma.sqlite3",
                            "/class/hub.log", "/class/home/bob/notes.txt",
                            "/class/shared/cache/models/x"}
    seen.connections |= {("ann", 40001, "ann"), ("ann", 18081, "pid 7"), ("bob", 40001, "ann")}
    found = crossings(seen, homes, Path("/class/shared"))
    assert sorted(found) == sorted(["ann wrote /class/home/bob/notes.txt in bob's home",
                                    "ann wrote /class/shared/cache/models/x in the shared folder",
                                    "bob connected to ann's port 40001"])


def test_a_learner_runs_every_code_cell_with_the_answer_key() -> None:
    cells = notebook_cells(NOTEBOOKS / "02_load_balancing.ipynb")
    flagged = [c for c in cells if c.endswith("\nSOLUTION = True")]
    assert len(flagged) == 1 and "SOLUTION = False" in flagged[0]
    assert all(c.strip() for c in cells)
