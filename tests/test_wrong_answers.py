"""The wrong-answer gallery: every plausible mistake is told "not yet", for the right reason."""

import pytest

from wrong_answers import all_exercises

CASES = [(e, w) for e in all_exercises() for w in e.gallery]


def test_every_exercise_has_a_gallery():
    assert all_exercises(), "tests/wrong_answers/ names no exercise"
    empty = [e.id for e in all_exercises() if not e.gallery]
    assert not empty, f"no wrong answers for {empty}"


@pytest.mark.parametrize("exercise, wrong", CASES, ids=[f"{e.id}:{w.name}" for e, w in CASES])
def test_wrong_answer_is_told_not_yet_naming_the_failing_row(exercise, wrong, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    result = exercise.check(wrong.build())
    assert not result.passed, f"{wrong.name!r} passed, but must fail: {wrong.reason}"
    failed = [c.name for c in result.checks if not c.passed]
    assert any(wrong.failing_row in name for name in failed), (
        f"{wrong.name!r} failed, but not on a row named like {wrong.failing_row!r} "
        f"({wrong.reason}); failed rows: {failed}")
