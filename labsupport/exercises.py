"""Exercise checking and progress: the contract every notebook's exercises use.

Every notebook has three kinds of exercise, each with its own id:

- the **steps** that build the pattern, ``02_load_balancing/step-1``, ``…/step-2``, …;
- the **scenario** at the end, ``02_load_balancing`` (the notebook's own name);
- the **review quiz**, ``02_load_balancing/quiz`` (see :mod:`labsupport.quiz`).

A checks module writes each check as a function of the learner's answer that returns
(or yields) :class:`Check` rows: what was expected, what was found. :func:`judge` runs
one row on its own, so a hidden case that raises fails that row only and names the
input and how to reproduce it. :func:`run_checks` runs a checker, turns anything the
learner's code raises into feedback, records progress and returns a
:class:`CheckResult`, which renders as an HTML box whose display metadata carries
``{"labsupport": {"exercise": ID, "passed": bool}}``.

With ``solution_mode=True`` (the notebook's ``SOLUTION = True``), a failing check shows
its box and then raises :class:`ExerciseFailed`, so papermill fails the run.

Progress lives in a small JSON file, one entry per exercise id: ``$LABSUPPORT_PROGRESS``
if set, else ``~/.labsupport/progress.json``. ``00_start_here`` shows it per notebook.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labsupport import judged as judged_code

ENV_PROGRESS = "LABSUPPORT_PROGRESS"
judged_code.remember_run_times()  # in a kernel: when each cell ran, to spot stale checks


@dataclass(frozen=True)
class Exercise:
    """One notebook of the course and the exercise it ends with."""

    id: str  # also the notebook's file stem
    title: str
    pattern: str
    module: str  # the labsupport module that backs it ("" for the start notebook)
    know_first: str  # the "what you need to know first" line
    solve_minutes: int  # time to solve the exercise; reading and Run All are measured
    steps: int = 0  # "Your turn" step exercises in the notebook (ids …/step-1 to …/step-N)

    @property
    def notebook(self) -> str:
        return f"{self.id}.ipynb"

    def step_id(self, n: int) -> str:
        return step_id(self.id, n)

    @property
    def quiz_id(self) -> str:
        return quiz_id(self.id)


START = Exercise("00_start_here", "Start here", "setup check, course map, your progress",
                 "", "Python you can read; no cloud account, no GPU, no internet needed.", 0)

# The course map, in order. README.md, 00_start_here and every notebook's navigation
# line are generated from it (`make course-map`) and checked against it by the tests.
COURSE: tuple[Exercise, ...] = (
    Exercise("01_api_communication", "API communication",
             "sync vs async APIs, retries with jitter, idempotency keys", "api_communication",
             "Python; HTTP basics (methods, status codes, headers); a little SQL. No FastAPI "
             "experience needed.", 40, steps=4),
    Exercise("02_load_balancing", "Load balancing",
             "round-robin, least-connections, power of two choices, outlier detection",
             "load_balancing",
             "Python functions; percentiles (p50, p99). No queueing theory: the formulas are "
             "given and checked by simulation.", 35, steps=4),
    Exercise("03_message_queues", "Message queues",
             "queue between API and workers, ack, visibility timeout, DLQ", "message_queues",
             "Python, HTTP status codes, a little SQL (UPDATE, INSERT, a transaction); "
             "notebook 01 (idempotency keys) helps.", 40, steps=4),
    Exercise("04_model_routing", "Model routing",
             "rules- and classifier-based routing between a small and a large model",
             "model_routing",
             "Python, a threshold on a probability; 00 run once (it checks the embedding "
             "model). No API key: both models are simulated offline.", 35, steps=4),
    Exercise("05_rag_pipeline", "RAG pipeline",
             "ingestion (chunk, embed, store) and query (embed, retrieve, answer)",
             "rag_pipeline",
             "Python and a little numpy; what an embedding is (a vector whose dot product "
             "with another measures similarity of meaning).", 40, steps=4),
    Exercise("06_ai_observability", "AI observability",
             "TTFT, token throughput, P99, queue depth", "ai_observability",
             "Python; percentiles (02); notebook 03 (queues) helps.", 35, steps=4),
    Exercise("07_vector_database_design", "Vector database design",
             "metadata filtering, namespace isolation, embedding consistency",
             "vector_database_design",
             "Embeddings and top-k retrieval (05 RAG pipeline); numpy arrays; a Python "
             "class.", 40, steps=4),
    Exercise("08_capstone_ai_assistant", "Capstone: one AI assistant, game day",
             "all seven patterns in one system; find and fix seven faults from the metrics",
             "capstone",
             "Notebooks 01 to 07 (each incident's fix is one of their patterns); reading a "
             "dashboard and a log.", 60, steps=7),
)
EXERCISE_IDS = frozenset(e.id for e in COURSE)  # the notebooks' ids = their scenarios' ids
STEP_PREFIX, QUIZ = "step-", "quiz"


def step_id(notebook_id: str, n: int) -> str:
    """The id of step ``n`` (from 1) of a notebook: ``02_load_balancing/step-1``."""
    if type(n) is not int or n < 1:
        raise ValueError(f"a step number is an int from 1; got {n!r}")
    return f"{notebook_id}/{STEP_PREFIX}{n}"


def quiz_id(notebook_id: str) -> str:
    """The id of a notebook's review quiz: ``02_load_balancing/quiz``."""
    return f"{notebook_id}/{QUIZ}"


def split_id(exercise_id: str) -> tuple[str, str]:
    """``(notebook id, part)``; part is ``"scenario"``, ``"step-N"`` or ``"quiz"``.

    >>> split_id("02_load_balancing/step-2")
    ('02_load_balancing', 'step-2')
    """
    notebook_id, _, part = exercise_id.partition("/")
    return notebook_id, part or "scenario"


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One requirement of an exercise, with what it expected and what it found."""

    name: str
    passed: bool
    expected: str
    found: str
    hint: str = ""  # shown only when the check fails: what to look at next


@dataclass
class CheckResult:
    """The verdict on one attempt at an exercise, and which code it judged."""

    exercise: str
    checks: list[Check] = field(default_factory=list)
    judged: judged_code.Judged | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def started(self) -> bool:
        """False for the starter exactly as shipped (Run All checks it): not an attempt."""
        return not (self.judged and self.judged.untouched_starter)

    @property
    def verdict(self) -> str:
        if self.passed:
            return "Passed"
        return "Not yet" if self.started else "Not started"

    @property
    def score(self) -> int:
        """Rows passed: a quiz's score (one row per question)."""
        return sum(c.passed for c in self.checks)

    @property
    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"exercise": self.exercise, "passed": self.passed,
                                "started": self.started}
        if split_id(self.exercise)[1] == QUIZ:
            meta |= {"score": self.score, "out_of": len(self.checks)}
        return {"labsupport": meta}

    def summary(self) -> str:
        """Plain-text form: the verdict and one line per check."""
        lines = [f"{self.exercise}: {self.verdict}"]
        if not self.started:
            lines.append(f"  {NOT_STARTED}")
        if self.judged:
            lines.append(self.judged.text())
        for c in self.checks:
            mark = "PASS" if c.passed else "FAIL"
            lines.append(f"  [{mark}] {c.name}: expected {c.expected}; found {c.found}")
            if c.hint and not c.passed:
                lines.append(f"         hint: {c.hint}")
        return "\n".join(lines)

    def to_html(self) -> str:
        # Opaque colours with dark text, so the box reads in light and dark themes; every
        # cell aligned left and top (JupyterLab right-aligns table cells by default).
        if self.passed:
            colour, icon = "#1b7837", "&#10004;"
        elif self.started:
            colour, icon = "#b35806", "&#10008;"
        else:
            colour, icon = "#2c5d8a", "&#9675;"
        cell = "padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere"
        rows = []
        for c in self.checks:
            mark = "&#10004;" if c.passed else "&#10008;"
            hint = (f"<div style='color:#444;margin-top:2px'><i>Hint:</i> "
                    f"{html.escape(c.hint)}</div>" if c.hint and not c.passed else "")
            rows.append(
                "<tr style='background:#ffffff;color:#111;border-top:1px solid #e5e5e5'>"
                f"<td style='{cell}'>{mark}</td>"
                f"<td style='{cell}'>{html.escape(c.name)}</td>"
                f"<td style='{cell}'>{html.escape(c.expected)}</td>"
                f"<td style='{cell};white-space:pre-line'>{html.escape(c.found)}{hint}</td></tr>")
        intro = (f"<div style='color:#111;margin-top:4px'>{html.escape(NOT_STARTED)}</div>"
                 if not self.started else "")
        widths = ("2em", "26%", "30%", "auto")  # the mark column stays narrow
        head = "".join(f"<th style='{cell};width:{w}'>{h}</th>"
                       for h, w in zip(("", "check", "expected", "found"), widths, strict=True))
        return (
            f"<div class='labsupport-check' style='border:2px solid {colour};border-radius:6px;"
            "background:#ffffff;color:#111;padding:8px 12px;margin:4px 0'>"
            f"<div style='font-weight:bold;color:{colour};font-size:1.1em'>{icon} "
            f"{html.escape(self.exercise)}: {self.verdict}</div>{intro}"
            + (self.judged.html() if self.judged else "")
            + "<table style='border-collapse:collapse;margin-top:6px;color:#111;width:100%'>"
            f"<tr style='background:#f0f0f0;color:#111'>{head}</tr>"
            + "".join(rows) + "</table></div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        # IPython passes the second dict through as the output's metadata; tests read it.
        return {"text/html": self.to_html(), "text/plain": self.summary()}, self.metadata

    def __str__(self) -> str:
        return self.summary()


NOT_STARTED = ("This is the starter as shipped: edit it, run that cell, then this one. "
               "How the starter does:")


class ExerciseFailed(AssertionError):
    """Raised in solution mode when the reference solution does not pass."""


# --- running checks -----------------------------------------------------------------


def describe_exception(exc: BaseException) -> str:
    """One line naming the exception and where in the learner's code it came from."""
    frames = traceback.extract_tb(exc.__traceback__)
    # The learner's code runs in a notebook cell: IPython names those "<ipython-input-…>"
    # or a temporary file under ipykernel; prefer the last such frame.
    learner = [f for f in frames if "ipykernel" in f.filename or f.filename.startswith("<")]
    where = ""
    if learner:
        frame = learner[-1]
        where = f" (in {frame.name}, line {frame.lineno}: {(frame.line or '').strip()})"
    return f"{type(exc).__name__}: {exc}{where}"


def judge(name: str, run: Callable[[], Check], *, case: str, reproduce: str = "") -> Check:
    """Judge one check row on its own: if ``run`` raises, this row alone fails.

    ``case`` names the input the row ran on ("unseen incident B, seed 12"); ``reproduce``
    is code the learner can paste into a cell to see the same failure. A failed row that
    ``run`` returned gets both added to its hint, so every failure says where to look.
    """
    try:
        check = run()
    except Exception as exc:  # noqa: BLE001 - the learner's error is this row's feedback
        return raised(name, exc, case=case, reproduce=reproduce)
    if not isinstance(check, Check):  # a checker bug, not the learner's: say so plainly
        return Check(name, False, "a verdict", f"the checker returned {check!r:.60}",
                     _where(case, reproduce))
    return locate(check, case=case, reproduce=reproduce)


def _where(case: str, reproduce: str) -> str:
    return f"Input: {case}." + (f" Reproduce: {reproduce}" if reproduce else "")


def locate(check: Check, *, case: str, reproduce: str = "") -> Check:
    """``check``, and if it failed, its hint ends with the input and how to reproduce it."""
    if check.passed:
        return check
    return Check(check.name, False, check.expected, check.found,
                 hint=f"{check.hint} {_where(case, reproduce)}".strip())


def raised(name: str, exc: BaseException, *, case: str, reproduce: str = "") -> Check:
    """The failed row ``name`` for an exception the learner's code raised on ``case``."""
    return Check(name, False, "no exception", describe_exception(exc),
                 hint=_where(case, reproduce))


@contextmanager
def on_input(case: str, reproduce: str = "") -> Iterator[None]:
    """Name the input for an exception the learner's code raises in this block.

    For a checker that calls the learner's code outside :func:`judge` (a chunker over every
    document): the innermost ``on_input`` wins, and :func:`run_checks` puts it in the hint.
    """
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, "_labsupport_input"):
            exc._labsupport_input = (case, reproduce)  # type: ignore[attr-defined]
        raise


def run_checks(exercise: str, checks: Callable[[Any], Iterable[Check]], answer: Any, *,
               solution_mode: bool = False) -> CheckResult:
    """Run ``checks(answer)`` and return the verdict; never raises on a wrong answer.

    Anything the checks raise (most often the learner's own code failing inside them)
    becomes one failed check that names the exception. In solution mode a failed
    verdict is displayed and then raised, so that an automated run fails loudly.
    """
    found: list[Check] = []
    try:
        for check in checks(answer):  # a generator keeps the rows it yielded before a raise
            found.append(check)
    except Exception as exc:  # noqa: BLE001 - every learner error must become feedback
        found.append(raised_outside_rows(exc, after=found[-1].name if found else ""))
    if not found:  # a checker that checked nothing must not pass
        found = [Check("checks ran", False, "at least one check", "none")]
    judged = judged_code.describe(exercise, answer)
    if solution_mode and judged is not None and judged.untouched_starter:
        # The answer key is judged, never the starter: an answer of plain data (no function
        # to trace) set in the check cell would otherwise be taken for the shipped starter.
        judged = replace(judged, untouched_starter=False)
    result = CheckResult(exercise, found, judged)
    return finish(result, solution_mode=solution_mode)


def raised_outside_rows(exc: BaseException, after: str = "") -> Check:
    """The row for an exception raised while a checker ran the learner's code between rows.

    The error happened on the checker's input, not on anything the learner ran, so the hint
    names that input when the checker marked it (:func:`on_input`)."""
    case, reproduce = getattr(exc, "_labsupport_input", ("", ""))
    when = f"after the row {after!r}" if after else "before the first row"
    hint = (f"Your code raised this while the check ran it on the check's own input ({when}), "
            "so running your cell alone may not show it; the line named is where.")
    if case:
        hint += " " + _where(case, reproduce)
    return Check("your code runs", False, "no exception", describe_exception(exc), hint=hint)


def finish(result: CheckResult, *, solution_mode: bool = False) -> CheckResult:
    """Record ``result`` in the progress file (the untouched starter is not an attempt);
    in solution mode, show and raise a failure."""
    quiz = split_id(result.exercise)[1] == QUIZ
    if result.started:
        record_attempt(result.exercise, result.passed, score=result.score if quiz else None,
                       out_of=len(result.checks) if quiz else None)
    if solution_mode and not result.passed:
        _display(result)
        raise ExerciseFailed(result.summary())
    return result


def _display(result: CheckResult) -> None:
    try:
        from IPython.display import display
    except ImportError:  # outside IPython: print instead
        print(result.summary())
        return
    display(result)


# --- small helpers for writing checks -----------------------------------------------


def expect_callable(answer: Any, what: str = "your function") -> Check | None:
    """A failed check when ``answer`` is not callable (None, a number, …), else None."""
    if callable(answer):
        return None
    return Check(f"{what} is a function", False, "a function (def ...)",
                 f"{type(answer).__name__} {answer!r:.60}",
                 hint="Define the function in the starter cell and run that cell first.")


def rows_or_raised(rows: Callable[[], Iterable[Check]], name: str, case: str) -> Iterator[Check]:
    """The rows of a step's checker; if the learner's code raises part-way, the rows so far
    and then one failed row ``name`` that names the exception and the input ``case``."""
    try:
        yield from rows()
    except Exception as exc:  # noqa: BLE001 - the learner's error is feedback
        yield raised(name, exc, case=case)


def as_number(value: Any, what: str = "a number", *, finite: bool = True) -> float:
    """``value`` as a float; TypeError (naming ``what``) for a bool, a non-number, or, when
    ``finite``, NaN or infinity. Numpy scalars are accepted, a str of digits is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
            finite and not math.isfinite(value)):
        raise TypeError(f"returned {value!r:.40}, not {what}")
    return float(value)


def expect_type(answer: Any, types: type | tuple[type, ...], what: str) -> Check | None:
    """A failed check when ``answer`` is not of ``types``, else None."""
    if isinstance(answer, types):
        return None
    names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
    return Check(f"{what} has the right type", False, names,
                 f"{type(answer).__name__} {answer!r:.60}")


# --- progress -----------------------------------------------------------------------


def progress_path() -> Path:
    return Path(os.environ.get(ENV_PROGRESS, Path.home() / ".labsupport" / "progress.json"))


def load_progress(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Progress per exercise id: ``{"passed": bool, "attempts": int, "passed_at": iso}``.

    A missing or unreadable file reads as no progress (an unreadable one is kept aside
    as ``*.corrupt`` so nothing is silently thrown away).
    """
    path = path or progress_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        try:
            path.replace(path.with_suffix(path.suffix + ".corrupt"))
        except OSError:
            pass
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def record_attempt(exercise: str, passed: bool, path: Path | None = None, *,
                   score: int | None = None, out_of: int | None = None) -> None:
    """Count an attempt; remember the first time it passed and a quiz's best score.

    Written atomically: a crash never leaves half a file."""
    path = path or progress_path()
    progress = load_progress(path)
    entry = progress.setdefault(exercise, {"passed": False, "attempts": 0, "passed_at": None})
    entry["attempts"] = int(entry.get("attempts", 0)) + 1
    if passed and not entry.get("passed"):
        entry["passed"] = True
        entry["passed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if score is not None:
        entry["best_score"] = max(score, int(entry.get("best_score", 0)))
        entry["out_of"] = out_of
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".progress-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(progress, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home must not break the exercise; progress is a nicety


def reset_progress(path: Path | None = None) -> None:
    """Forget all progress (``make reset`` calls this)."""
    (path or progress_path()).unlink(missing_ok=True)


def progress_rows(path: Path | None = None, *,
                  progress: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per notebook, in course order: its steps, its scenario and its quiz.

    ``steps_passed`` of ``steps`` (the notebook's declared steps, or more if the progress
    file knows more), the scenario's ``passed``, ``attempts`` and ``passed_at``, and the
    quiz's best ``quiz_score`` of ``quiz_out_of`` (None before the first attempt). From the
    file at ``path``, or from ``progress`` already read (the instructor's view reads others').
    """
    progress = load_progress(path) if progress is None else progress
    rows = []
    for ex in COURSE:
        scenario = progress.get(ex.id, {})
        steps_seen = [split_id(k)[1] for k in progress if split_id(k)[0] == ex.id]
        numbers = [int(p[len(STEP_PREFIX):]) for p in steps_seen
                   if p.startswith(STEP_PREFIX) and p[len(STEP_PREFIX):].isdigit()]
        steps = max([ex.steps, *numbers])
        quiz = progress.get(ex.quiz_id, {})
        rows.append({"notebook": ex.notebook, "title": ex.title,
                     "steps": steps,
                     "steps_passed": sum(bool(progress.get(ex.step_id(n), {}).get("passed"))
                                         for n in range(1, steps + 1)),
                     "passed": bool(scenario.get("passed")),
                     "attempts": int(scenario.get("attempts", 0)),
                     "passed_at": scenario.get("passed_at") or "",
                     "quiz_score": quiz.get("best_score"),
                     "quiz_out_of": quiz.get("out_of")})
    return rows
