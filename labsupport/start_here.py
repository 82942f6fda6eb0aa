"""Backs ``00_start_here.ipynb``: the setup check, the course map and your progress.

From the shell, ``python -m labsupport.start_here`` runs the same setup check and
exits non-zero if any item fails.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labsupport import embeddings, exercises, judged

# Packages whose versions the setup check reports (PyPI names).
KEY_PACKAGES = ("jupyterlab", "ipywidgets", "numpy", "torch", "sentence-transformers",
                "chromadb", "plotly", "fastapi", "uvicorn", "httpx", "prometheus-client",
                "papermill")
NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
RUN_TIMES = NOTEBOOKS_DIR.parent / "docs" / "run_times.json"  # written by `make bench`
RUN_ALL_BUDGET_SECONDS = 45  # used for a notebook `make bench` has not measured yet
READING_WORDS_PER_MINUTE = 180  # prose and code read carefully, not skimmed
NAV_START, NAV_END = "<!-- nav:start -->", "<!-- nav:end -->"
MIN_FREE_MEMORY_GB = 1.5  # one notebook kernel peaks under 1 GB; leave room for the browser


@dataclass(frozen=True)
class Item:
    """One line of the setup check."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0  # how long the probe took

    def line(self) -> str:
        took = f" [{self.seconds:.1f} s]" if self.seconds >= 0.5 else ""
        return f"{'OK  ' if self.ok else 'FAIL'}  {self.name:<26} {self.detail}{took}"


def _check(name: str, probe: Callable[[], str]) -> Item:
    """Run one probe; any exception is a FAIL with its message, never a traceback."""
    started = time.perf_counter()
    try:
        detail = probe()
        ok = True
    except Exception as exc:  # noqa: BLE001 - the check reports, it does not crash
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Item(name, ok, detail, time.perf_counter() - started)


def _python() -> str:
    if sys.version_info < (3, 11):  # noqa: UP036 - a kernel from another Python may run this
        raise RuntimeError(f"Python {platform.python_version()}; the course needs 3.11 or newer")
    return f"Python {platform.python_version()} ({sys.executable})"


def package_versions() -> dict[str, str | None]:
    """The installed version of each of KEY_PACKAGES (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _packages() -> str:
    versions = package_versions()
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        raise RuntimeError(f"not installed: {', '.join(missing)} (run `make lab`)")
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _model_hash() -> str:
    path = embeddings.model_path()
    embeddings.verify_model_dir(path, full=True)  # hash again, do not trust the marker
    return f"{embeddings.MODEL_NAME}@{embeddings.MODEL_REVISION}, SHA-256 {embeddings.WEIGHTS_SHA256[:12]}… in {path}"


def _embedding() -> str:
    import numpy as np

    vectors = embeddings.embed(["How do I reset my password?", "I forgot my login"])
    if vectors.shape != (2, embeddings.DIMENSION):
        raise RuntimeError(f"shape {vectors.shape}, expected (2, {embeddings.DIMENSION})")
    similarity = float(np.dot(vectors[0], vectors[1]))
    return f"2 × {vectors.shape[1]} dims; cosine('reset my password', 'forgot my login') = {similarity:.2f}"


def _chroma() -> str:
    import chromadb

    with tempfile.TemporaryDirectory(prefix="labsupport-chroma-") as folder:
        client = chromadb.PersistentClient(
            path=folder, settings=chromadb.Settings(anonymized_telemetry=False))
        collection = client.get_or_create_collection(
            "setup_check", embedding_function=embeddings.chroma_embedding_function(),
            configuration={"hnsw": {"space": "cosine"}})
        collection.upsert(ids=["a", "b"], documents=["Reset your password on the login page.",
                                                     "Expenses are paid monthly."])
        hit = collection.query(query_texts=["I forgot my login"], n_results=1)["ids"][0][0]
        del collection, client  # close the files before the folder goes
    if hit != "a":
        raise RuntimeError(f"query returned {hit!r}, expected 'a'")
    return f"chromadb {chromadb.__version__}: embedded collection created, queried, right hit"


def _widget() -> str:
    import ipywidgets as widgets
    from IPython import get_ipython
    from IPython.display import display

    slider = widgets.IntSlider(value=3, min=1, max=7, description="widgets")
    if get_ipython() is not None:
        display(slider)
        return f"ipywidgets {widgets.__version__}: a slider is shown above this table"
    return f"ipywidgets {widgets.__version__}: created (no notebook to display it in)"


def _memory() -> str:
    import psutil

    available_gb = psutil.virtual_memory().available / 1e9
    if available_gb < MIN_FREE_MEMORY_GB:
        raise RuntimeError(f"{available_gb:.1f} GB free; close other kernels (need {MIN_FREE_MEMORY_GB} GB)")
    return f"{available_gb:.1f} GB free"


def setup_check() -> list[Item]:
    """Every setup item, in order; each is OK or FAIL with a detail line."""
    return [
        _check("Python", _python),
        _check("packages", _packages),
        _check("embedding model + hash", _model_hash),
        _check("an embedding", _embedding),
        _check("Chroma (embedded)", _chroma),
        _check("widget", _widget),
        _check("free memory", _memory),
    ]


def verdict(items: list[Item]) -> str:
    """One sentence: "All set." or how many items failed and where to look."""
    failed = sum(not item.ok for item in items)
    return ("All set." if not failed else
            f"{failed} item(s) FAIL: see README.md, section Troubleshooting.")


def report(items: list[Item]) -> str:
    """The setup check as text, one line per item (the shell's version)."""
    return "\n".join([*(item.line() for item in items), verdict(items)])


def _table(rows: list[dict], text: str, **options: object) -> object:
    """``rows`` as a labsupport.plots.Table; if plotly (so plots) is missing, ``text``
    as plain text: the packages item already says what to install."""
    try:
        from labsupport.plots import Table
    except ImportError:
        from IPython.display import Pretty

        return Pretty(text)
    return Table(rows, **options)


def setup_table(items: list[Item]) -> object:
    """The setup check as a table for the notebook: status, item, what was found, time."""
    rows = [{"status": "OK" if item.ok else "FAIL", "item": item.name,
             "detail": (f"all {len(KEY_PACKAGES)} installed (versions below)"
                        if item.name == "packages" and item.ok else item.detail),
             "time (s)": item.seconds} for item in items]
    return _table(rows, report(items), formats={"time (s)": ".1f"},
                  caption="Setup check")


def versions_table() -> object:
    """The installed version of every package the course relies on."""
    rows = [{"package": name, "version": version or "not installed"}
            for name, version in package_versions().items()]
    return _table(rows, "\n".join(f"{r['package']} {r['version']}" for r in rows),
                  caption="Package versions")


def reading_minutes(notebook: Path) -> float:
    """Minutes to read every cell of ``notebook`` at READING_WORDS_PER_MINUTE."""
    cells = json.loads(notebook.read_text())["cells"]
    words = sum(len("".join(c["source"]).split()) for c in cells
                if NAV_START not in "".join(c["source"]))
    return words / READING_WORDS_PER_MINUTE


def run_seconds(ex: exercises.Exercise) -> float:
    """Run All seconds measured by `make bench` (docs/run_times.json), else the budget."""
    try:
        measured = json.loads(RUN_TIMES.read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        measured = {}
    return float(measured.get(ex.id, RUN_ALL_BUDGET_SECONDS))


def estimated_minutes(ex: exercises.Exercise) -> int:
    """Reading time + measured Run All time + time to solve, rounded up to 5 minutes."""
    path = NOTEBOOKS_DIR / ex.notebook
    total = reading_minutes(path) + run_seconds(ex) / 60 + ex.solve_minutes
    return 5 * math.ceil(total / 5)


def binder_url(notebook: str) -> str:
    """A mybinder.org link that opens ``notebook`` in JupyterLab, built from the
    repository URL in pyproject.toml ([project.urls] Repository)."""
    urls = importlib.metadata.metadata("labsupport").get_all("Project-URL") or []
    repo = next(u.split(",", 1)[1].strip() for u in urls if u.startswith("Repository"))
    owner_name = repo.removeprefix("https://github.com/").removesuffix(".git")
    return f"https://mybinder.org/v2/gh/{owner_name}/HEAD?urlpath=lab/tree/notebooks/{notebook}"


def _available(ex: exercises.Exercise) -> bool:
    return (NOTEBOOKS_DIR / ex.notebook).is_file()


def course_map_markdown(link_prefix: str = "", binder: bool = False) -> str:
    """The course map as a Markdown table: notebook (a link), pattern, time, module.

    README.md (``link_prefix="notebooks/"``, with Binder links) and 00_start_here carry
    this table verbatim; tests/test_course.py checks that they are current.
    """
    header = "| notebook | pattern | est. time | module |" + (" Binder |" if binder else "")
    lines = [header, "|---|---|---:|---|" + ("---|" if binder else "")]
    total = 0
    for ex in (exercises.START, *exercises.COURSE):
        module = f"`labsupport/{ex.module or 'start_here'}.py`"
        launch = ""
        if _available(ex):
            name, minutes = f"[{ex.notebook}]({link_prefix}{ex.notebook})", estimated_minutes(ex)
            total += minutes
            time_text = f"{minutes} min"
            launch = f" [launch]({binder_url(ex.notebook)}) |" if binder else ""
        else:  # listed so the map shows the whole course; not written yet
            name, module, time_text = f"{ex.notebook} *(in preparation)*", "—", "—"
            launch = " |" if binder else ""
        lines.append(f"| {name} | **{ex.title}**: {ex.pattern} | {time_text} | {module} |{launch}")
    lines.append(f"| | **total** | {total / 60:.1f} h | |" + (" |" if binder else ""))
    return "\n".join(lines)


def nav_markdown(ex: exercises.Exercise) -> str:
    """The navigation line of a notebook: previous/next, time, what to know first."""
    order = [exercises.START, *exercises.COURSE]
    index = order.index(ex)
    before = next((e for e in reversed(order[:index]) if _available(e)), None)
    after = next((e for e in order[index + 1:] if _available(e)), None)
    links = " · ".join(filter(None, [
        f"← previous: [{before.title}]({before.notebook})" if before else "",
        "[course map](00_start_here.ipynb#Course-map)" if ex is not exercises.START else "",
        f"next: [{after.title}]({after.notebook}) →" if after else ""]))
    return (f"{NAV_START}\n**About {estimated_minutes(ex)} minutes** (reading, running every "
            f"cell, the exercise) · **What you need to know first:** {ex.know_first}\n\n"
            f"{links}\n{NAV_END}")


def progress_html() -> str:
    """The learner's progress per notebook: steps built, scenario solved, quiz score."""
    rows = exercises.progress_rows()
    done = sum(r["passed"] for r in rows)

    def steps(r: dict) -> str:
        return f"{r['steps_passed']} of {r['steps']}" if r["steps"] else "—"

    def scenario(r: dict) -> str:
        return "&#10004; passed" if r["passed"] else ("not yet" if r["attempts"] else "—")

    def quiz(r: dict) -> str:
        return "—" if r["quiz_score"] is None else f"{r['quiz_score']} / {r['quiz_out_of']}"

    # JupyterLab right-aligns table cells: text left, the attempts count right.
    left, right = "padding:2px 12px;text-align:left", "padding:2px 12px;text-align:right"
    body = "".join(
        f"<tr><td style='{left}'><a href='{html.escape(r['notebook'])}'>"
        f"{html.escape(r['notebook'])}</a></td>"
        f"<td style='{left}'>{steps(r)}</td><td style='{left}'>{scenario(r)}</td>"
        f"<td style='{right}'>{r['attempts']}</td><td style='{left}'>{quiz(r)}</td>"
        f"<td style='{left}'>{html.escape(r['passed_at'])}</td></tr>"
        for r in rows)
    head = "".join(f"<th style='{right if h == 'attempts' else left}'>{h}</th>"
                   for h in ("notebook", "steps built", "scenario", "attempts", "quiz (best)",
                             "scenario passed at (UTC)"))
    return (f"<p><b>{done} of {len(rows)}</b> scenario exercises passed "
            f"(progress file: <code>{html.escape(str(exercises.progress_path()))}</code>)</p>"
            f"<table><tr>{head}</tr>" + body + "</table>")


MAP_START, MAP_END = "<!-- course-map:start -->", "<!-- course-map:end -->"


def _replace_between(text: str, start: str, end: str, new: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{new}{tail}"


def with_course_map(text: str, link_prefix: str, binder: bool = False) -> str:
    """``text`` with the part between the course-map markers replaced by the current map."""
    new = f"{MAP_START}\n{course_map_markdown(link_prefix, binder)}\n{MAP_END}"
    return _replace_between(text, MAP_START, MAP_END, new)


def with_nav(notebook: dict, ex: exercises.Exercise) -> dict:
    """``notebook`` (nbformat JSON) with a navigation cell after the title and at the end."""
    cells = [c for c in notebook["cells"] if NAV_START not in "".join(c["source"])]
    nav = {"cell_type": "markdown", "metadata": {}, "source": nav_markdown(ex)}
    notebook["cells"] = [cells[0], {**nav, "id": "nav-top"}, *cells[1:], {**nav, "id": "nav-end"}]
    return notebook


def write_course_map() -> None:
    """Refresh the course map (README.md, 00_start_here), every notebook's navigation cells
    (from ``exercises.COURSE`` and docs/run_times.json) and the starters' fingerprints
    (``make course-map``)."""
    import nbformat

    readme = NOTEBOOKS_DIR.parent / "README.md"
    readme.write_text(with_course_map(readme.read_text(), "notebooks/", binder=True))
    for ex in (exercises.START, *exercises.COURSE):
        path = NOTEBOOKS_DIR / ex.notebook
        if not path.is_file():
            continue
        notebook = nbformat.from_dict(with_nav(nbformat.read(path, as_version=4), ex))
        for cell in notebook.cells:
            if MAP_START in cell.source:
                cell.source = with_course_map(cell.source, "")
        nbformat.write(notebook, path)
    judged.write_starters(sorted(NOTEBOOKS_DIR.glob("*.ipynb")))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-course-map"]:
        write_course_map()
        raise SystemExit(0)
    checked = setup_check()
    print(report(checked))
    raise SystemExit(0 if all(item.ok for item in checked) else 1)
