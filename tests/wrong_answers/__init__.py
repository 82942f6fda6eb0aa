"""The wrong-answer gallery: for every exercise, answers that must be told "not yet".

One module per notebook (``tests/wrong_answers/load_balancing.py``), each defining

- ``EXERCISES``: a list of :class:`Exercise`, one per exercise id of that notebook
  (steps, scenario, quiz), each with its checker, its answer key and its gallery.

``tests/test_wrong_answers.py`` runs every :class:`WrongAnswer` through its checker and
asserts "not yet" with a failed row whose name contains ``failing_row``;
``tests/test_load_independence.py`` runs every answer key idle and beside busy processes
and asserts the same verdict, row by row. This is nbgrader's ``--invert``, widened from
the starter to the mistakes learners actually make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labsupport import exercises as ex


@dataclass(frozen=True)
class WrongAnswer:
    """A plausible wrong or gaming answer, and why it must not pass."""

    name: str  # short and unique within its exercise: "starter", "all to server 0"
    reason: str  # why a real system would suffer from it
    build: Callable[[], Any]  # returns the answer (lazily: some answers need data loaded)
    failing_row: str  # part of the name of a row that must fail for this answer


@dataclass(frozen=True)
class Exercise:
    """One exercise id, its checker, its answer key and its wrong answers."""

    id: str  # "02_load_balancing", "02_load_balancing/step-1", "02_load_balancing/quiz"
    check: Callable[[Any], ex.CheckResult]  # the notebook's check (solution_mode=False)
    answer_key: Callable[[], Any]  # returns the answer key's answer
    gallery: list[WrongAnswer] = field(default_factory=list)


def step(checks: Any, n: int, answer_key: Callable[[], Any],
         gallery: list[WrongAnswer]) -> Exercise:
    """Step ``n`` of the notebook whose checks module is ``checks`` (its ``EXERCISE_ID`` and
    ``check_step``), with its answer key and wrong answers."""
    return Exercise(id=ex.step_id(checks.EXERCISE_ID, n), check=lambda a: checks.check_step(n, a),
                    answer_key=answer_key, gallery=gallery)


def all_exercises() -> list[Exercise]:
    """Every exercise of every gallery module in this folder, in file order."""
    import importlib
    import pkgutil

    found: list[Exercise] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(module.EXERCISES)
    return found
