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
    assert metadata == {"labsupport": {"exercise": "03_message_queues", "passed": False}}
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
    ex.record_attempt("07_vector_database_design", True)
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
