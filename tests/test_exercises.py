"""The exercise checker: wrong answers become feedback, progress is recorded safely."""

import json

import pytest

from labsupport import exercises as ex


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv(ex.ENV_PROGRESS, str(path))
    return path


def _doubling_checks(answer):
    """A toy exercise: the answer must be a function that doubles numbers."""
    bad = ex.expect_callable(answer, "your function")
    if bad:
        return [bad]
    found = answer(21)
    return [ex.Check("doubles 21", found == 42, "42", repr(found), hint="multiply by 2")]


def test_right_answer_passes_and_records_progress(progress_file):
    result = ex.run_checks("02_load_balancing", _doubling_checks, lambda x: 2 * x)
    assert result.passed and result.verdict == "Passed"
    saved = json.loads(progress_file.read_text())
    assert saved["02_load_balancing"]["passed"] is True
    assert saved["02_load_balancing"]["attempts"] == 1
    assert saved["02_load_balancing"]["passed_at"]


@pytest.mark.parametrize("answer, expected_in_found", [
    (None, "NoneType"),
    (42, "int 42"),
    ("lambda x: 2*x", "str"),
])
def test_wrong_type_or_none_is_feedback(answer, expected_in_found):
    result = ex.run_checks("02_load_balancing", _doubling_checks, answer)
    assert not result.passed
    assert expected_in_found in result.checks[0].found


def test_exception_in_learner_code_is_feedback_not_traceback():
    def learner(x):
        return x / 0

    result = ex.run_checks("02_load_balancing", _doubling_checks, learner)
    assert not result.passed
    assert result.checks[0].name == "your code runs"
    assert "ZeroDivisionError: division by zero" in result.checks[0].found


def test_wrong_value_names_expected_and_found():
    result = ex.run_checks("02_load_balancing", _doubling_checks, lambda x: x + 2)
    assert not result.passed
    assert (result.checks[0].expected, result.checks[0].found) == ("42", "23")
    assert "hint: multiply by 2" in result.summary()


def test_checker_that_checks_nothing_does_not_pass():
    assert not ex.run_checks("02_load_balancing", lambda a: [], None).passed


def test_solution_mode_raises_on_failure_and_not_on_success():
    with pytest.raises(ex.ExerciseFailed, match="Not yet"):
        ex.run_checks("02_load_balancing", _doubling_checks, None, solution_mode=True)
    assert ex.run_checks("02_load_balancing", _doubling_checks, lambda x: 2 * x,
                         solution_mode=True).passed


def test_display_bundle_carries_the_verdict_metadata():
    result = ex.run_checks("03_message_queues", _doubling_checks, None)
    data, metadata = result._repr_mimebundle_()
    assert metadata == {"labsupport": {"exercise": "03_message_queues", "passed": False,
                                       "started": True}}
    quiz = ex.CheckResult("03_message_queues/quiz", [ex.Check("q1", True, "", ""),
                                                     ex.Check("q2", False, "", "")])
    assert quiz.metadata == {"labsupport": {"exercise": "03_message_queues/quiz",
                                            "passed": False, "started": True, "score": 1,
                                            "out_of": 2}}
    assert "Not yet" in data["text/html"] and "Not yet" in data["text/plain"]


def test_html_escapes_learner_text():
    result = ex.CheckResult("x", [ex.Check("<b>", False, "<i>", "<script>")])
    assert "<script>" not in result.to_html()


def test_attempts_count_and_first_pass_time_is_kept(progress_file):
    ex.run_checks("04_model_routing", _doubling_checks, None)
    ex.run_checks("04_model_routing", _doubling_checks, lambda x: 2 * x)
    first = ex.load_progress()["04_model_routing"]["passed_at"]
    ex.run_checks("04_model_routing", _doubling_checks, None)  # a later failure
    entry = ex.load_progress()["04_model_routing"]
    assert entry == {"passed": True, "attempts": 3, "passed_at": first}


def test_corrupt_progress_file_is_kept_aside_not_lost(progress_file):
    progress_file.write_text("{not json")
    assert ex.load_progress() == {}
    assert progress_file.with_suffix(".json.corrupt").read_text() == "{not json"
    ex.record_attempt("05_rag_pipeline", True)
    assert ex.load_progress()["05_rag_pipeline"]["passed"] is True


def test_progress_rows_follow_course_order_and_reset(progress_file):
    ex.record_attempt(ex.COURSE[-1].id, True)
    rows = ex.progress_rows()
    assert [r["notebook"] for r in rows] == [e.notebook for e in ex.COURSE]
    assert rows[-1]["passed"] and not rows[0]["passed"]
    ex.reset_progress()
    assert not progress_file.exists()
    assert not any(r["passed"] for r in ex.progress_rows())


def test_unwritable_progress_location_does_not_break_checking(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(ex.ENV_PROGRESS, str(blocker / "progress.json"))
    assert ex.run_checks("02_load_balancing", _doubling_checks, lambda x: 2 * x).passed


# --- v2: ids per step, scenario and quiz; rows judged on their own -------------------


def test_ids_for_steps_scenario_and_quiz():
    lb = next(e for e in ex.COURSE if e.id == "02_load_balancing")
    assert lb.step_id(1) == ex.step_id(lb.id, 1) == "02_load_balancing/step-1"
    assert lb.quiz_id == "02_load_balancing/quiz"
    assert ex.split_id("02_load_balancing/step-3") == ("02_load_balancing", "step-3")
    assert ex.split_id("02_load_balancing") == ("02_load_balancing", "scenario")
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError):
            ex.step_id(lb.id, bad)


def test_progress_per_id_shows_steps_scenario_and_best_quiz_score(progress_file):
    ex.record_attempt("02_load_balancing/step-1", True)
    ex.record_attempt("02_load_balancing/step-2", False)
    ex.record_attempt("02_load_balancing/step-3", True)
    ex.record_attempt("02_load_balancing/quiz", False, score=4, out_of=5)
    ex.record_attempt("02_load_balancing/quiz", False, score=2, out_of=5)  # best is kept
    ex.record_attempt("02_load_balancing", False)
    row = next(r for r in ex.progress_rows() if r["notebook"] == "02_load_balancing.ipynb")
    assert (row["steps"], row["steps_passed"]) == (4, 2)  # 4 steps declared in COURSE, 2 of them passed
    assert (row["passed"], row["attempts"]) == (False, 1)
    assert (row["quiz_score"], row["quiz_out_of"]) == (4, 5)
    other = next(r for r in ex.progress_rows() if r["notebook"] == "03_message_queues.ipynb")
    assert (other["steps_passed"], other["quiz_score"], other["attempts"]) == (0, None, 0)


def test_start_here_shows_steps_scenario_and_quiz(progress_file):
    from labsupport import start_here

    ex.record_attempt("04_model_routing/step-1", True)
    ex.record_attempt("04_model_routing/quiz", True, score=5, out_of=5)
    page = start_here.progress_html()
    assert "1 of 4" in page and "5 / 5" in page and "quiz (best)" in page  # 04 declares 4 steps


def _hidden_cases(answer):
    """Three hidden cases; the learner's code raises on the second only."""
    for n in (1, 2, 3):
        yield ex.judge(f"case {n}", lambda n=n: ex.Check(f"case {n}", answer(n) == 2 * n,
                                                         str(2 * n), str(answer(n))),
                       case=f"n = {n}", reproduce=f"my_double({n})")


def test_a_hidden_case_that_raises_fails_that_row_only():
    result = ex.run_checks("02_load_balancing/step-1", _hidden_cases,
                           lambda n: 1 / 0 if n == 2 else 2 * n)
    assert [c.passed for c in result.checks] == [True, False, True]
    bad = result.checks[1]
    assert bad.name == "case 2" and "ZeroDivisionError" in bad.found
    assert "Input: n = 2." in bad.hint and "Reproduce: my_double(2)" in bad.hint


def test_a_wrong_row_names_its_input_and_how_to_reproduce_it():
    result = ex.run_checks("02_load_balancing/step-1", _hidden_cases, lambda n: 2 * n + (n == 3))
    assert [c.passed for c in result.checks] == [True, True, False]
    assert result.checks[2].hint == "Input: n = 3. Reproduce: my_double(3)"


def test_rows_yielded_before_a_checker_raises_are_kept():
    def checker(answer):
        yield ex.Check("first", True, "", "")
        raise RuntimeError(answer)

    result = ex.run_checks("x", checker, "boom")
    assert [(c.name, c.passed) for c in result.checks] == [("first", True),
                                                           ("your code runs", False)]


def test_as_number_is_strict_and_rows_or_raised_keeps_the_rows_before_a_raise():
    import math

    import numpy as np

    assert ex.as_number(np.float64(0.5)) == 0.5 and type(ex.as_number(np.int64(2))) is float
    for bad in (True, "1.5", None, math.nan):
        with pytest.raises(TypeError):
            ex.as_number(bad)
    assert math.isinf(ex.as_number(math.inf, finite=False))

    def rows():
        yield ex.Check("first", True, "", "")
        raise KeyError("boom")

    got = list(ex.rows_or_raised(rows, "the step", "case 7"))
    assert [c.name for c in got] == ["first", "the step"]
    assert not got[1].passed and "KeyError" in got[1].found and "case 7" in got[1].hint
