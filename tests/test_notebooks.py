"""Execute every notebook with papermill, as CI and `make bench` do.

For each notebook: Run All with SOLUTION=True twice in one kernel (the second pass
catches servers started twice and collections created twice) and every exercise (steps,
scenario, quiz) must pass; the untouched starter (SOLUTION=False) must run to the end and
pass none of them.
Each run's wall time and peak kernel memory go to build/notebook_runs.json.
"""

import fcntl
import json
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest

from labsupport import exercises
from notebook_runner import NOTEBOOKS, RunRecord, run

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "build" / "notebook_runs.json"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
WITH_EXERCISE = [p for p in ALL if p.stem in exercises.EXERCISE_IDS]


def _record(record: RunRecord) -> None:
    RECORDS.parent.mkdir(exist_ok=True)
    with open(RECORDS.with_suffix(".lock"), "w") as lock:  # tests may run in parallel
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(RECORDS.read_text()) if RECORDS.exists() else []
        runs = [r for r in runs
                if (r["notebook"], r["parameters"]) != (record.notebook, record.parameters)]
        RECORDS.write_text(json.dumps([*runs, asdict(record)], indent=2))


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_solution_runs_twice_in_one_kernel_and_passes(path, tmp_path):
    record = run(path, tmp_path, {"SOLUTION": True}, passes=2)
    _record(record)
    assert record.error is None, f"{path.name}: {record.error}"
    if path.stem in exercises.EXERCISE_IDS:
        failed = [i for i, passed in record.verdicts.items() if not passed]
        assert path.stem in record.verdicts and not failed, \
            f"{path.name}: the answer key did not pass {failed or path.stem}"
        progress = json.loads((tmp_path / "progress.json").read_text())
        assert all(progress[i]["passed"] is True for i in record.verdicts)
    if path.stem == exercises.START.id:  # every setup item OK (outputs are the second pass)
        nb = nbformat.read(record.output, as_version=4)
        text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                         for c in nb.cells for o in c.get("outputs", []))
        assert "All set." in text and "FAIL" not in text, text


def _boxes(output: Path) -> dict[str, dict]:
    """Exercise id -> the metadata of its last verdict box in an executed notebook."""
    nb = nbformat.read(output, as_version=4)
    return {meta["exercise"]: meta for cell in nb.cells for out in cell.get("outputs", [])
            if (meta := out.get("metadata", {}).get("labsupport"))}


@pytest.mark.parametrize("path", WITH_EXERCISE, ids=lambda p: p.stem)
def test_untouched_starter_is_told_not_started(path, tmp_path):
    """Run All on the notebook as shipped: every exercise "not yet", the scenario's box says
    "not started" (the starter cell as shipped, checks/starters.json) and it counts as no
    attempt in the progress 00 shows."""
    record = run(path, tmp_path, {"SOLUTION": False})
    _record(record)
    assert record.error is None, f"{path.name}: the starter must run to the end: {record.error}"
    passed = [i for i, ok in record.verdicts.items() if ok]
    assert path.stem in record.verdicts and not passed, \
        f"{path.name}: the untouched starter must pass no exercise; it passed {passed}"
    assert _boxes(record.output)[path.stem]["started"] is False, \
        f"{path.name}: the untouched starter was not recognised (run `make course-map`)"
    progress_file = tmp_path / "progress.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    assert path.stem not in progress, f"{path.name}: Run All counted as an attempt"
