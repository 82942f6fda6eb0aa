"""Every exercise's answer key gets the same verdict, row by row, idle and on a busy machine.

The answer keys come from the wrong-answer gallery (tests/wrong_answers/), which names
every exercise with its checker. Two busy processes on this two-core machine is what a
CI runner or a classroom hub looks like.
"""

import psutil
import pytest

from load import busy_processes
from wrong_answers import all_exercises

# Alone on the machine: "two busy processes" must mean two, not two beside a parallel worker.
pytestmark = pytest.mark.serial
EXERCISES = all_exercises()


def _rows(exercise):
    result = exercise.check(exercise.answer_key())
    return [(c.name, c.passed) for c in result.checks]


def test_busy_processes_really_take_the_cpu():
    with busy_processes(2) as procs:
        start = [psutil.Process(p.pid).cpu_times().user for p in procs]
        psutil.cpu_percent(interval=1.0)  # one second of wall time
        spent = [psutil.Process(p.pid).cpu_times().user - s
                 for p, s in zip(procs, start, strict=True)]
    # Each spun (on an idle 2-core machine, about 1 s each; on a machine already busy, its
    # share): a sleeping or dead process would show no CPU time at all.
    assert all(s > 0.05 for s in spent), spent
    assert all(p.poll() is not None for p in procs)  # and they are gone after the block


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.id)
def test_answer_key_verdict_is_the_same_idle_and_beside_two_busy_processes(
        exercise, tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    idle = _rows(exercise)
    with busy_processes(2):
        busy = _rows(exercise)
    assert all(passed for _, passed in idle), f"the answer key fails idle: {idle}"
    assert busy == idle, f"idle {idle}\nbusy {busy}"
