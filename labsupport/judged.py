"""Which code a check judged: the cell it came from, and whether that is still what you see.

A check judges the objects the kernel holds, not the text in the editor. A learner who
edits the starter and runs only the check cell gets a verdict on the *old* code. So every
check box says what it judged: the cell that last set ``my_answer`` (``In [24]``) and the
functions the answer holds (``my_policy``, from cell ``In [25]``, its first lines).
:func:`describe` also notices two cases worth a sentence:

- **the untouched starter**: the judged code is the starter cell exactly as shipped (its
  hash is in ``checks/starters.json``). Run All does that; it is not an attempt, and the
  box says "not started" rather than "failed";
- **edited after it ran**: the notebook was saved after that cell last ran, and the saved
  starter cell differs from the code that ran. (Unsaved edits live only in the browser,
  which the kernel cannot see: the first lines in the box are there to compare by eye.)

Outside IPython (pytest calling a checker directly) there are no cells: :func:`describe`
then names the functions and their modules only.
"""

from __future__ import annotations

import hashlib
import html
import inspect
import json
import linecache
import re
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

STARTERS = Path(__file__).resolve().parent / "checks" / "starters.json"
SOLUTIONS_PACKAGE = "labsupport.solutions"
ANSWER_NAME = "my_answer"  # what every check cell passes to its checker
SHOWN_LINES = 3  # of the judged function, from its def line: enough to recognise it
_MAX_DEPTH = 3  # how deep to look for functions inside an answer (a dict of dataclasses…)


@dataclass(frozen=True)
class Definition:
    """One function the answer holds, and where it was defined."""

    name: str
    cell: int | None  # the execution count of its cell (In [n]); None if not from a cell
    module: str  # "__main__" for a cell, else the module that defined it
    first_lines: str  # its def line and the next lines, as they ran
    cell_source: str  # the whole cell as it ran ("" if not from a cell)


@dataclass(frozen=True)
class Judged:
    """What a check judged, and what it noticed about it."""

    definitions: tuple[Definition, ...]
    untouched_starter: bool = False
    warning: str = ""  # e.g. the starter was edited and saved after it ran

    def text(self) -> str:
        """One line per definition, for the plain-text verdict."""
        lines = [f"judged: {_where(d)}" for d in self.definitions]
        return "\n".join(lines + ([f"warning: {self.warning}"] if self.warning else []))

    def html(self) -> str:
        """The "judged" block of the verdict box."""
        parts = []
        for d in self.definitions:
            code = (f"<pre style='margin:2px 0 4px 0;padding:4px 6px;background:#f4f4f4;"
                    f"color:#111;white-space:pre-wrap'>{html.escape(d.first_lines)}</pre>"
                    if d.first_lines else "")
            parts.append(f"<div>Judged: {html.escape(_where(d))}</div>{code}")
        if self.warning:
            parts.append("<div style='background:#fff3cd;color:#111;border:1px solid #b35806;"
                         f"padding:4px 8px;margin:4px 0'>&#9888; {html.escape(self.warning)}</div>")
        return "<div class='labsupport-judged' style='margin-top:6px'>" + "".join(parts) + "</div>"


def _where(d: Definition) -> str:
    if d.name == ANSWER_NAME and d.cell is not None:
        return f"{d.name}, set in cell In [{d.cell}]"
    if d.cell is not None:
        return f"{d.name}, from cell In [{d.cell}]"
    if d.module.startswith(SOLUTIONS_PACKAGE):
        return f"{d.name}, the answer key ({d.module})"
    if d.module == "__main__":
        return f"{d.name}, from a notebook cell"
    return f"{d.name}, from {d.module} (not code from this notebook)"


# --- finding the functions in an answer ---------------------------------------------


def functions_in(answer: Any, depth: int = 0) -> list[Any]:
    """The plain functions an answer holds: itself, a dataclass's fields, a dict's values,
    a list's items, a partial's function, a cell-defined class's methods (in order, once)."""
    found: list[Any] = []

    def add(fn: Any) -> None:
        if not any(fn is f for f in found):
            found.append(fn)

    if inspect.ismethod(answer):
        answer = answer.__func__
    if inspect.isfunction(answer):
        add(answer)
        return found
    if depth >= _MAX_DEPTH or isinstance(answer, str | bytes | int | float | bool | type(None)):
        return found
    if hasattr(answer, "func") and callable(answer.func):  # functools.partial
        children: list[Any] = [answer.func]
    elif isinstance(answer, dict):
        children = list(answer.values())
    elif isinstance(answer, list | tuple | set | frozenset):
        children = list(answer)[:50]
    elif is_dataclass(answer) and not isinstance(answer, type):
        children = [getattr(answer, f.name, None) for f in fields(answer)]
    elif getattr(type(answer), "__module__", "") == "__main__":  # an object of a cell's class
        children = [v for v in vars(type(answer)).values() if inspect.isfunction(v)]
    else:
        children = []
    for child in children:
        for fn in functions_in(child, depth + 1):
            add(fn)
    return found


# --- cells ----------------------------------------------------------------------------


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def cell_number(filename: str) -> int | None:
    """The execution count of the cell IPython compiled as ``filename`` (None if none)."""
    shell = _shell()
    names = getattr(getattr(shell, "compile", None), "_filename_map", {}) if shell else {}
    number = names.get(filename)
    return number if isinstance(number, int) else None


def definition(fn: Any) -> Definition:
    """Where ``fn`` was defined, with its first lines as they ran."""
    code = fn.__code__
    number = cell_number(code.co_filename)
    lines = linecache.getlines(code.co_filename)
    start = code.co_firstlineno - 1
    first = "".join(lines[start:start + SHOWN_LINES]).rstrip()
    return Definition(getattr(fn, "__qualname__", fn.__name__), number,
                      getattr(fn, "__module__", "") or "", first,
                      "".join(lines) if number is not None else "")


def normalized(source: str) -> str:
    """A cell's source without trailing spaces or blank lines at either end."""
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def fingerprint(source: str) -> str:
    """SHA-256 of the normalized source: the starters registry's key."""
    return hashlib.sha256(normalized(source).encode()).hexdigest()


def shipped_starters(path: Path | None = None) -> dict[str, list[str]]:
    """Exercise id -> fingerprints of its starter cells as shipped (empty if unreadable)."""
    try:
        data = json.loads((path or STARTERS).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _starter_of(cell: dict) -> str | None:
    """The exercise id a notebook cell is the starter of (``metadata.labsupport.starter``)."""
    return cell.get("metadata", {}).get("labsupport", {}).get("starter")


def starter_cells(notebook: dict, exercise_id: str) -> list[str]:
    """The sources of the starter cells of ``exercise_id`` in a notebook (nbformat JSON)."""
    return ["".join(c.get("source", [])) for c in notebook.get("cells", [])
            if _starter_of(c) == exercise_id]


# --- when cells ran ------------------------------------------------------------------


def remember_run_times() -> None:
    """Record when each cell finishes (IPython's post_run_cell), once per kernel."""
    shell = _shell()
    if shell is None or hasattr(shell, "_labsupport_ran_at"):
        return
    shell._labsupport_ran_at = {}

    def record(result: Any) -> None:
        if result.execution_count is not None:
            shell._labsupport_ran_at[result.execution_count] = time.time()

    shell.events.register("post_run_cell", record)


def ran_at(cell: int) -> float | None:
    """When cell ``In [cell]`` finished (seconds since the epoch), if recorded."""
    shell = _shell()
    return getattr(shell, "_labsupport_ran_at", {}).get(cell) if shell else None


def notebook_path(notebook_id: str) -> Path:
    """The notebook file this kernel runs: JupyterLab names it in ``__session__`` (when
    absolute); otherwise the kernel's working directory is the notebook's folder."""
    shell = _shell()
    session = shell.user_ns.get("__session__") if shell else None
    if isinstance(session, str) and session.endswith(f"{notebook_id}.ipynb") \
            and Path(session).is_absolute():
        return Path(session)
    return Path.cwd() / f"{notebook_id}.ipynb"  # a relative session path is the server's


def _edited_after_run(exercise_id: str, d: Definition) -> str:
    """A warning when the saved notebook is newer than the cell's run and its starter
    cell differs from what ran; "" when nothing can be seen."""
    notebook_id = exercise_id.partition("/")[0]
    path, when = notebook_path(notebook_id), ran_at(d.cell) if d.cell is not None else None
    try:
        if when is None or path.stat().st_mtime <= when:
            return ""
        saved = starter_cells(json.loads(path.read_text()), exercise_id)
    except (OSError, ValueError):
        return ""
    if not saved or any(normalized(s) == normalized(d.cell_source) for s in saved):
        return ""
    return (f"The starter cell was edited and saved after In [{d.cell}] ran: this check "
            f"judged the code that ran, not what you see. Run the starter cell "
            f"(Shift+Enter), then this check again.")


def answer_cell(answer: Any, name: str = ANSWER_NAME) -> Definition | None:
    """The last cell before the running one that assigned ``name``, when ``answer`` is what
    ``name`` holds (a step's check judges another object); None outside IPython.

    The running cell (IPython stores a cell in its history before running it: the last
    entry) is left out: some check cells set ``my_answer`` themselves."""
    shell = _shell()
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    if not history or shell.user_ns.get(name, object()) is not answer:
        return None
    assigns = re.compile(rf"^{re.escape(name)}\s*[:=]", re.MULTILINE)
    for number in range(len(history) - 2, 0, -1):
        source = history[number]
        if assigns.search(source):
            line = next(text for text in source.splitlines() if assigns.match(text))
            return Definition(name, number, "__main__", line.rstrip(), source)
    return None


def describe(exercise_id: str, answer: Any) -> Judged | None:
    """What a check of ``exercise_id`` judges in ``answer``: the cell that set ``my_answer``
    and the functions the answer holds (None when there is neither)."""
    assigned = answer_cell(answer)
    definitions = ((assigned,) if assigned else ()) + tuple(
        definition(fn) for fn in functions_in(answer))
    if not definitions:
        return None
    from_cells = [d for d in definitions if d.cell is not None]
    shipped = set(shipped_starters().get(exercise_id, []))
    untouched = bool(from_cells) and len(from_cells) == len(definitions) and all(
        fingerprint(d.cell_source) in shipped for d in from_cells)
    warning = next((w for d in from_cells if (w := _edited_after_run(exercise_id, d))), "")
    return Judged(definitions, untouched_starter=untouched, warning=warning)


def starters_registry(notebooks: list[Path]) -> dict[str, list[str]]:
    """Exercise id -> fingerprints of its starter cells, read from ``notebooks``."""
    registry: dict[str, list[str]] = {}
    for path in sorted(notebooks):
        for cell in json.loads(path.read_text()).get("cells", []):
            if exercise_id := _starter_of(cell):
                registry.setdefault(exercise_id, []).append(fingerprint("".join(cell["source"])))
    return registry


def write_starters(notebooks: list[Path], path: Path | None = None) -> None:
    """Write ``checks/starters.json`` from the notebooks as shipped (``make course-map``)."""
    (path or STARTERS).write_text(json.dumps(starters_registry(notebooks), indent=1, sort_keys=True) + "\n")
