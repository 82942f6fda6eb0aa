"""The review quiz at the end of every notebook: multiple-choice and numeric questions.

A :class:`Quiz` is answered two ways, with the same verdict and the same progress entry
(id ``<notebook>/quiz``, its best score kept):

- with widgets, ``display(quiz.widget())``: each question gets its control and a
  "Check" button, and once answered shows whether it was right and why;
- in code, ``quiz.answer({"q1": 2, "q2": 0.05, ...})``, which is how papermill runs the
  answer key (full score) and the untouched starter (no answers: "not yet").

Multiple-choice answers are the option's index (from 0) or its exact text; numeric
answers pass within the question's tolerance. The quiz passes when every question is
right: it is a review, so a learner tries again until it is.
"""

from __future__ import annotations

import html
import math
import numbers
from dataclasses import dataclass
from typing import Any

from labsupport import exercises as ex


@dataclass(frozen=True)
class Choice:
    """A multiple-choice question: exactly one option is right."""

    prompt: str
    options: tuple[str, ...]
    correct: int  # index into options
    explanation: str  # shown once answered, right or wrong: why the right option is right

    def judge(self, given: Any) -> tuple[bool, str]:
        """(right?, the answer as the learner sees it); raises ValueError on a bad answer."""
        if type(given) is str:  # strict: a str subclass with a loose __eq__ fails
            if given not in self.options:
                raise ValueError(f"{given!r} is not one of the options")
            given = self.options.index(given)
        if type(given) is not int or not 0 <= given < len(self.options):
            raise ValueError(f"an option number from 0 to {len(self.options) - 1}, got {given!r}")
        return given == self.correct, self.options[given]

    @property
    def answer_text(self) -> str:
        return self.options[self.correct]


@dataclass(frozen=True)
class Numeric:
    """A question answered with a number, right within ``tolerance`` (absolute, in ``unit``)."""

    prompt: str
    correct: float
    tolerance: float
    unit: str  # "ms", "%", "requests", or "" for a plain number
    explanation: str

    def judge(self, given: Any) -> tuple[bool, str]:
        if isinstance(given, bool) or not isinstance(given, numbers.Real):
            raise ValueError(f"a number, got {type(given).__name__} {given!r:.40}")
        value = float(given)  # a plain float: no subclass's comparison is trusted
        if not math.isfinite(value):
            raise ValueError(f"a finite number, got {value}")
        return abs(value - self.correct) <= self.tolerance, f"{value:g} {self.unit}".strip()

    @property
    def answer_text(self) -> str:
        return f"{self.correct:g} {self.unit}".strip()


Question = Choice | Numeric


class Quiz:
    """A notebook's review quiz: questions by id, judged in code or with widgets."""

    def __init__(self, notebook_id: str, questions: dict[str, Question]) -> None:
        if not questions:
            raise ValueError("a quiz needs at least one question")
        self.id = ex.quiz_id(notebook_id)
        self.questions = dict(questions)

    def row(self, qid: str, given: Any) -> ex.Check:
        """One question's verdict as a check row; an unanswered or malformed answer fails."""
        q = self.questions[qid]
        expected = "the right option" if isinstance(q, Choice) else f"within ±{q.tolerance:g} {q.unit}"
        if given is None:
            return ex.Check(qid, False, expected, "not answered", hint=q.prompt)
        try:
            right, shown = q.judge(given)
        except ValueError as exc:
            return ex.Check(qid, False, expected, str(exc), hint=q.prompt)
        why = f"{'Right' if right else 'Not quite'}: {q.answer_text}. {q.explanation}"
        return ex.Check(qid, right, expected, f"{shown}. {why}")

    def answer(self, answers: dict[str, Any] | None, *, solution_mode: bool = False) -> ex.CheckResult:
        """Judge ``answers`` (question id -> answer), record the score, return the verdict."""
        answers = answers if isinstance(answers, dict) else {}
        unknown = sorted(map(str, set(answers) - set(self.questions)))
        rows = []
        for qid in self.questions:
            row = self.row(qid, answers.get(qid))
            if unknown and row.found == "not answered":  # a typo in an id: say so
                row = ex.Check(qid, False, row.expected,
                               f"not answered (answers given for unknown ids: {', '.join(unknown)})",
                               row.hint)
            rows.append(row)
        return ex.finish(ex.CheckResult(self.id, rows), solution_mode=solution_mode)

    def widget(self) -> Any:
        """The quiz as ipywidgets: a control, a Check button and the explanation per question."""
        import ipywidgets as widgets

        given: dict[str, Any] = {}
        score = widgets.HTML(self._score_html(given))
        boxes = []
        for number, (qid, q) in enumerate(self.questions.items(), start=1):
            if isinstance(q, Choice):
                control = widgets.RadioButtons(options=[(text, i) for i, text in enumerate(q.options)],
                                               value=None, layout={"width": "max-content"})
            else:
                control = widgets.FloatText(value=0.0, description=q.unit or "answer")
            button = widgets.Button(description="Check", button_style="info")
            feedback = widgets.HTML()

            def on_click(_: Any, qid: str = qid, control: Any = control,
                         feedback: Any = feedback) -> None:
                given[qid] = control.value
                feedback.value = self._feedback_html(self.row(qid, control.value))
                if len(given) == len(self.questions):  # all answered once: record the score
                    self.answer(dict(given))
                score.value = self._score_html(given)

            button.on_click(on_click)
            prompt = widgets.HTML(f"<b>{number}. {html.escape(q.prompt)}</b>")
            boxes.append(widgets.VBox([prompt, control, button, feedback]))
        return widgets.VBox([*boxes, score])

    def _score_html(self, given: dict[str, Any]) -> str:
        right = sum(self.row(qid, a).passed for qid, a in given.items())
        return (f"<b>Score: {right} / {len(self.questions)}</b> "
                f"({len(given)} of {len(self.questions)} answered)")

    @staticmethod
    def _feedback_html(row: ex.Check) -> str:
        colour = "#1b7837" if row.passed else "#b35806"
        return f"<div style='color:{colour}'>{html.escape(row.found)}</div>"
