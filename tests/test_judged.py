"""Which code a check judged: cells, the untouched starter, edits saved after a run.

The cells run in a real IPython shell (in-process), as in a notebook kernel.
"""

import functools
import json
import os
import time
from dataclasses import dataclass

import pytest
from IPython.core.interactiveshell import InteractiveShell

from labsupport import exercises as ex
from labsupport import judged

STARTER = '''# STARTER: the only cell you edit.
def my_double(x):
    return x + 1


my_answer = my_double
'''
ANSWER = STARTER.replace("x + 1", "2 * x")
EXERCISE = "02_load_balancing"


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """A fresh IPython shell whose notebook is tmp_path/02_load_balancing.ipynb."""
    monkeypatch.setenv(ex.ENV_PROGRESS, str(tmp_path / "progress.json"))
    registry = tmp_path / "starters.json"
    registry.write_text(json.dumps({EXERCISE: [judged.fingerprint(STARTER)]}))
    monkeypatch.setattr(judged, "STARTERS", registry)
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance()
    judged.remember_run_times()
    notebook = tmp_path / f"{EXERCISE}.ipynb"
    ip.user_ns["__session__"] = str(notebook)
    yield ip
    InteractiveShell.clear_instance()


def _save_notebook(path, starter_source):
    cell = {"cell_type": "code", "metadata": {"labsupport": {"starter": EXERCISE}},
            "source": starter_source, "outputs": [], "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}}))


def _check(answer):
    def checks(fn):
        found = fn(21)
        return [ex.Check("doubles 21", found == 42, "42", repr(found))]
    return ex.run_checks(EXERCISE, checks, answer)


def test_functions_in_finds_functions_inside_containers():
    def policy(view):
        return 0

    def helper():
        return 1

    @dataclass
    class Balancer:
        policy: object
        detector: object = None

    answer = {"router": Balancer(policy), "extra": [functools.partial(helper)], "n": 3}
    assert judged.functions_in(answer) == [policy, helper]
    assert judged.functions_in("a string") == [] and judged.functions_in(None) == []


def test_box_names_the_function_and_its_cell(shell):
    shell.run_cell(ANSWER, store_history=True)
    number = shell.execution_count - 1
    result = _check(shell.user_ns["my_answer"])
    assert result.passed and result.started
    assert f"my_double, from cell In [{number}]" in result.to_html()
    assert "def my_double(x):" in result.to_html() and "return 2 * x" in result.to_html()
    assert f"judged: my_double, from cell In [{number}]" in result.summary()


def test_box_names_the_cell_that_set_my_answer_even_for_a_value(shell):
    shell.run_cell("my_answer = {'cause': 'long prompts', 'metric': None}", store_history=True)
    number = shell.execution_count - 1
    shell.run_cell("x = 1", store_history=True)  # a later cell that does not set it
    found = judged.describe(EXERCISE, shell.user_ns["my_answer"])
    assert found is not None and f"my_answer, set in cell In [{number}]" in found.text()
    assert "my_answer = {&#x27;cause&#x27;" in found.html()
    other = judged.describe(EXERCISE, {"cause": "network"})  # a step's check, another object
    assert other is None


def test_untouched_starter_is_not_started_and_not_an_attempt(shell, tmp_path):
    shell.run_cell(STARTER, store_history=True)
    result = _check(shell.user_ns["my_answer"])
    assert not result.passed and not result.started
    assert result.verdict == "Not started" and "starter as shipped" in result.to_html()
    assert result.metadata["labsupport"] == {"exercise": EXERCISE, "passed": False,
                                             "started": False}
    assert EXERCISE not in ex.load_progress()
    shell.run_cell(STARTER + "\n# my first try\n", store_history=True)  # edited: an attempt
    result = _check(shell.user_ns["my_answer"])
    assert result.verdict == "Not yet" and ex.load_progress()[EXERCISE]["attempts"] == 1


def test_edit_saved_after_the_run_is_flagged(shell, tmp_path):
    notebook = tmp_path / f"{EXERCISE}.ipynb"
    shell.run_cell(STARTER, store_history=True)
    number = shell.execution_count - 1
    _save_notebook(notebook, ANSWER)  # edited and saved, but not run
    later = time.time() + 5
    os.utime(notebook, (later, later))
    result = _check(shell.user_ns["my_answer"])
    assert f"edited and saved after In [{number}] ran" in result.to_html()
    assert "warning:" in result.summary()


def test_no_warning_when_the_saved_cell_is_what_ran_or_older(shell, tmp_path):
    notebook = tmp_path / f"{EXERCISE}.ipynb"
    _save_notebook(notebook, STARTER)  # saved first (older than the run) …
    os.utime(notebook, (time.time() - 60, time.time() - 60))
    shell.run_cell(ANSWER, store_history=True)  # … then edited and run: nothing stale
    assert "edited and saved" not in _check(shell.user_ns["my_answer"]).to_html()
    _save_notebook(notebook, ANSWER)  # saved after the run, same code
    later = time.time() + 5
    os.utime(notebook, (later, later))
    assert "edited and saved" not in _check(shell.user_ns["my_answer"]).to_html()


def test_outside_ipython_names_the_module():
    from labsupport.solutions import load_balancing as key

    found = judged.describe("02_load_balancing", key.answer)
    assert found is not None and not found.untouched_starter
    assert "the answer key (labsupport.solutions.load_balancing)" in found.text()


def test_exception_outside_rows_names_the_input():
    def checks(fn):
        yield ex.Check("first row", True, "", "")
        for name in ("a.md", "b.md"):
            with ex.on_input(f"document {name}", reproduce=f"my_chunker(load({name!r}))"):
                fn(name)

    def learner(name):
        if name == "b.md":
            raise KeyError(name)

    row = ex.run_checks(EXERCISE, checks, learner).checks[-1]
    assert row.name == "your code runs" and "KeyError" in row.found
    assert "after the row 'first row'" in row.hint
    assert "Input: document b.md." in row.hint and "my_chunker(load('b.md'))" in row.hint


def test_starters_registry_matches_the_notebooks():
    """checks/starters.json is what `make course-map` writes from the notebooks."""
    notebooks = sorted((judged.STARTERS.parents[2] / "notebooks").glob("*.ipynb"))
    assert judged.shipped_starters() == judged.starters_registry(notebooks), (
        "a starter cell changed: run `make course-map`")
    assert set(judged.shipped_starters()) >= set(ex.EXERCISE_IDS)
