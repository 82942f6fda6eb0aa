"""`make classroom`: a class of twenty learners on a real JupyterHub (issue 23).

Not part of `make test` (pyproject's ``norecursedirs`` skips this folder; it takes about half an
hour on two cores). ``CLASS_SIZES="1 5 10 20"`` holds several classes, one after the other (the
default is "1 20"). Each class's tables are printed and saved in ``.classroom/class-N.json``.
"""

from __future__ import annotations

import os

import pytest
from run_class import NOTEBOOKS, report, run_class

from labsupport import classroom

# A class of one first: its times are what "alone" means in the larger classes' tables.
SIZES = [int(n) for n in os.environ.get("CLASS_SIZES", "1 20").split()]


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}-learners")
def held(request) -> dict:
    result = run_class(request.param)
    print("\n" + report(result))
    return result


def test_every_learner_ran_every_notebook_without_error(held: dict) -> None:
    failed = [f"{r['learner']}: {r['failure']}" for r in held["runs"] if r["failure"]]
    failed += [f"{r['learner']} {nb['notebook']}: {nb['errors']}"
               for r in held["runs"] for nb in r["notebooks"] if nb["errors"]]
    assert not failed, failed
    assert all(len(r["notebooks"]) == len(NOTEBOOKS) for r in held["runs"])


def test_every_check_passed_in_each_learners_own_progress_file(held: dict) -> None:
    assert held["progress_failures"] == []


def test_no_learner_wrote_or_connected_beyond_their_own(held: dict) -> None:
    assert held["crossings"] == []
    # 05 keeps a Chroma store, and each learner's is in their own home.
    assert all(paths for paths in held["chroma_files"].values()), held["chroma_files"]


def test_the_shared_folder_is_unchanged_and_was_read_only(held: dict) -> None:
    assert held["shared_read_only_by"]
    assert held["shared_unchanged"]


def test_every_kernel_used_the_shared_course(held: dict) -> None:
    assert all("/shared/course/labsupport/" in r["labsupport_file"] for r in held["runs"])


def test_the_instructors_view_shows_every_learner_passing_every_scenario(held: dict) -> None:
    view = held["class_view"]
    assert [row["learner"] for row in view] == [r["learner"] for r in held["runs"]]
    assert all(row["scenarios passed"] == 7 for row in view), view
    every = len(classroom.exercise_ids())  # the heat map: every step, scenario and quiz passed
    assert held["heat_map_passed"] == [every] * len(view)
