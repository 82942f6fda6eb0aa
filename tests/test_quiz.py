"""The review quiz: judged in code and with widgets, the best score recorded."""

import ipywidgets as widgets
import pytest

from labsupport import exercises as ex
from labsupport.quiz import Choice, Numeric, Quiz

QUIZ = Quiz("06_ai_observability", {
    "q1": Choice("Which metric shows queueing first?", ("CPU", "TTFT p99", "error rate"), 1,
                 "Requests wait before their first token."),
    "q2": Numeric("p99 of 1..100 with numpy's default (linear)?", 99.01, 0.005, "",
                  "Linear interpolation between the 99th and 100th values."),
})


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv(ex.ENV_PROGRESS, str(tmp_path / "progress.json"))


def test_full_marks_pass_and_record_the_score():
    result = QUIZ.answer({"q1": 1, "q2": 99.01})
    assert result.passed and result.exercise == "06_ai_observability/quiz"
    assert result.metadata["labsupport"] | {} == {"exercise": "06_ai_observability/quiz",
                                                 "passed": True, "started": True, "score": 2,
                                                 "out_of": 2}
    entry = ex.load_progress()["06_ai_observability/quiz"]
    assert (entry["passed"], entry["best_score"], entry["out_of"]) == (True, 2, 2)


def test_an_option_may_be_given_by_its_text_and_each_answer_is_explained():
    result = QUIZ.answer({"q1": "TTFT p99", "q2": 99.0})
    assert [c.passed for c in result.checks] == [True, False]
    assert "Not quite: 99.01" in result.checks[1].found
    assert "Requests wait" in result.checks[0].found


@pytest.mark.parametrize("answers", [None, {}, "q1=1", {"q1": None}])
def test_no_answers_is_not_yet(answers):
    result = QUIZ.answer(answers)
    assert not result.passed and result.score == 0
    assert "not answered" in result.checks[0].found


class Sneaky(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("bad, why", [
    (True, "option number"), (7, "option number"), (Sneaky("CPU"), "option number"),
    ("TTFT", "not one of the options"),
])
def test_malformed_choice_answers_are_feedback(bad, why):
    result = QUIZ.answer({"q1": bad, "q2": 99.01})
    assert not result.passed and why in result.checks[0].found


@pytest.mark.parametrize("bad", ["99.01", float("nan"), True, None])
def test_malformed_numbers_are_feedback(bad):
    assert not QUIZ.answer({"q1": 1, "q2": bad}).checks[1].passed


def test_an_unknown_question_id_is_named():
    result = QUIZ.answer({"q1": 1, "Q2": 99.01})
    assert "unknown ids: Q2" in result.checks[1].found


def test_solution_mode_raises_on_a_wrong_answer():
    with pytest.raises(ex.ExerciseFailed):
        QUIZ.answer({"q1": 0}, solution_mode=True)


def test_the_widget_judges_each_question_and_records_the_score_when_all_are_answered():
    box = QUIZ.widget()
    q1, q2, score = box.children
    radio, button, feedback = q1.children[1:]
    radio.value = 1
    button.click()
    assert "Right" in feedback.value and "1 of 2 answered" in score.value
    assert "06_ai_observability/quiz" not in ex.load_progress()  # not all answered yet
    number, button2, feedback2 = q2.children[1:]
    number.value = 50.0
    button2.click()
    assert "Not quite" in feedback2.value and "Score: 1 / 2" in score.value
    assert ex.load_progress()["06_ai_observability/quiz"]["best_score"] == 1
    number.value = 99.01
    button2.click()
    assert ex.load_progress()["06_ai_observability/quiz"]["passed"] is True
    assert isinstance(radio, widgets.RadioButtons) and radio.options[1] == ("TTFT p99", 1)


def test_a_wrong_option_fails_and_shows_the_right_one():
    result = QUIZ.answer({"q1": 0, "q2": 99.01})
    assert [c.passed for c in result.checks] == [False, True] and result.score == 1
    assert result.checks[0].found.startswith("CPU. Not quite: TTFT p99.")
