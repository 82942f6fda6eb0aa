"""The course's shape: notebooks follow the skeleton, the course map agrees everywhere."""

import json
import re
from pathlib import Path

import pytest

from labsupport import exercises, start_here

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    for index, cell in enumerate(_cells(path)):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {index} has outputs: run `make strip`"
            assert cell["execution_count"] is None, f"cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_one_parameters_cell_with_solution_switch(path):
    tagged = [c for c in _cells(path) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1
    assert "SOLUTION = False" in "".join(tagged[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_star_imports_no_installs_no_downloads(path):
    source = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    for forbidden in ("import *", "pip install", "urlretrieve", "requests.get(", "wget "):
        assert forbidden not in source


def test_every_notebook_is_on_the_course_map():
    known = {exercises.START.notebook} | {e.notebook for e in exercises.COURSE}
    assert {p.name for p in NOTEBOOKS} <= known
    assert exercises.START.notebook in {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in exercises.EXERCISE_IDS],
                         ids=lambda p: p.stem)
def test_exercise_notebook_has_hints_and_a_check_cell(path):
    cells = _cells(path)
    text = "\n".join("".join(c["source"]) for c in cells)
    assert text.count("<details>") >= 2, "two or three hints in <details> blocks"
    assert "check_exercise(" in text and "solution_mode=SOLUTION" in text
    assert "```mermaid" in text, "one Mermaid diagram for the idea"


def test_course_map_in_readme_and_start_here_is_current():
    readme = (ROOT / "README.md").read_text()
    assert readme == start_here.with_course_map(readme, "notebooks/", binder=True), \
        "run `make course-map`"
    cell = next(c for c in _cells(ROOT / "notebooks" / "00_start_here.ipynb")
                if start_here.MAP_START in "".join(c["source"]))
    source = "".join(cell["source"])
    assert source == start_here.with_course_map(source, ""), "run `make course-map`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_navigation_cells_are_current(path):
    ex = next(e for e in (exercises.START, *exercises.COURSE) if e.notebook == path.name)
    navs = [i for i, c in enumerate(_cells(path)) if start_here.NAV_START in "".join(c["source"])]
    assert navs == [1, len(_cells(path)) - 1], "a navigation cell after the title and at the end"
    for i in navs:
        assert "".join(_cells(path)[i]["source"]) == start_here.nav_markdown(ex), "run `make course-map`"


def test_readme_links_inside_the_repository_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", readme)
    assert targets, "the README links to the notebooks"
    for target in targets:
        assert (ROOT / target.split("#")[0]).exists(), f"README links to missing {target}"


def test_binder_links_open_each_available_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert start_here.binder_url(path.name) in readme


def test_readme_names_the_commands_and_binder_badge():
    import tomllib

    readme = (ROOT / "README.md").read_text()
    for needed in ("make lab", "make test", "make bench", "Troubleshooting", "offline"):
        assert needed in readme
    repo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_name = repo.removeprefix("https://github.com/")
    assert f"mybinder.org/v2/gh/{owner_name}/HEAD" in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metadata_is_what_jupyterlab_writes_so_opening_changes_nothing(path):
    """JupyterLab rewrites kernelspec and language_info from the running kernel when it
    opens a notebook; if they differ from the committed ones it marks the notebook modified
    and autosaves it. The committed ones are the installed kernel's (and etc/notebook_clean.py
    shows git these for a learner on another Python)."""
    import platform
    import subprocess
    import sys

    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    metadata = json.loads(path.read_text())["metadata"]
    assert metadata["kernelspec"] == {"display_name": spec.display_name,
                                      "language": spec.language, "name": "python3"}
    assert metadata["language_info"] == IPythonKernel.language_info, (
        f"language_info differs from Python {platform.python_version()}'s kernel")
    opened_elsewhere = json.loads(path.read_text())  # as JupyterLab saves it on Python 3.13
    opened_elsewhere["metadata"]["language_info"]["version"] = "3.13.1"
    for text in (path.read_text(), json.dumps(opened_elsewhere)):
        cleaned = subprocess.run([sys.executable, str(ROOT / "etc" / "notebook_clean.py")],
                                 input=text, capture_output=True, text=True, check=True)
        assert cleaned.stdout == path.read_text(), "git would see a change"
