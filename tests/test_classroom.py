"""Tests of labsupport.classroom: the instructor's view of every learner's progress file."""

import json

from labsupport import classroom
from labsupport import exercises as ex


def _home(root, name, progress):
    """A learner's home folder with a progress file (None: the learner never ran a check;
    a str: the file's raw text)."""
    home = root / name
    home.mkdir()
    if progress is not None:
        (home / ".labsupport").mkdir()
        text = progress if isinstance(progress, str) else json.dumps(progress)
        (home / ".labsupport" / "progress.json").write_text(text)
    return home


def _class(tmp_path):
    _home(tmp_path, "ada", {
        "01_api_communication/step-1": {"passed": True, "attempts": 2},
        "01_api_communication/step-2": {"passed": False, "attempts": 1},
        "01_api_communication": {"passed": True, "attempts": 3},
        "01_api_communication/quiz": {"passed": False, "attempts": 1, "best_score": 4,
                                      "out_of": 5}})
    _home(tmp_path, "bob", {"05_rag_pipeline/step-3": {"passed": True, "attempts": 1}})
    _home(tmp_path, "cyd", None)
    _home(tmp_path, "dee", "{not json")
    return classroom.find_progress_files(str(tmp_path / "*"))


def test_find_progress_files_lists_every_home_and_accepts_files(tmp_path):
    files = _class(tmp_path)
    assert list(files) == ["ada", "bob", "cyd", "dee"]
    assert files["ada"] == tmp_path / "ada" / ".labsupport" / "progress.json"
    direct = classroom.find_progress_files(str(tmp_path / "*" / ".labsupport" / "progress.json"))
    assert list(direct) == ["ada", "bob", "dee"]  # cyd has no file yet


def test_class_table_per_learner_and_notebook(tmp_path):
    rows = {r["learner"]: r for r in classroom.class_table(_class(tmp_path))}
    assert rows["ada"]["01"] == "1/4 ✓ q4/5" and rows["ada"]["scenarios passed"] == 1
    assert rows["ada"]["02"] == "0/4"
    assert rows["bob"]["05"] == "1/4" and rows["bob"]["scenarios passed"] == 0
    assert rows["cyd"]["07"] == "0/4" and rows["cyd"]["scenarios passed"] == 0
    assert rows["dee"]["progress"].startswith("unreadable")


def test_progress_matrix_marks_passed_tried_and_not_tried(tmp_path):
    learners, ids, z = classroom.progress_matrix(_class(tmp_path))
    assert learners == ["ada", "bob", "cyd", "dee"]
    assert len(ids) == sum(e.steps + 2 for e in ex.COURSE) and len(set(ids)) == len(ids)
    ada = dict(zip(ids, z[0], strict=True))
    assert ada["01_api_communication/step-1"] == classroom.PASSED
    assert ada["01_api_communication/step-2"] == classroom.TRIED
    assert ada["01_api_communication/quiz"] == classroom.TRIED
    assert ada["02_load_balancing"] == classroom.NOT_TRIED
    assert sum(v == classroom.PASSED for v in z[1]) == 1
    assert z[2] == z[3] == [classroom.NOT_TRIED] * len(ids)
    fig = classroom.heat_map(classroom.find_progress_files(str(tmp_path / "*")))
    assert list(fig.data[0].y) == learners and list(fig.data[0].x) == ids
    assert [list(row) for row in fig.data[0].z] == z


def test_reading_writes_nothing(tmp_path):
    files = _class(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    classroom.class_table(files)
    classroom.progress_matrix(files)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the corrupt file is reported, not moved aside


def test_command_line_prints_the_table(tmp_path, capsys):
    _class(tmp_path)
    assert classroom.main(["progress", str(tmp_path / "*")]) == 0
    out = capsys.readouterr().out
    assert "4 learners" in out and "ada" in out and "1/4 ✓ q4/5" in out
    assert classroom.main(["progress", str(tmp_path / "nobody-*")]) == 1
