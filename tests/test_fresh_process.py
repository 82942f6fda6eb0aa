"""The fresh-process runner: learner code runs in a new process, state does not carry over."""

import json

from IPython.core.interactiveshell import InteractiveShell

from labsupport.fresh_process import program, rebuild, run_fresh

KEYS: dict[str, int] = {}  # module state: a fresh process gets a copy, never this dict
FACTOR = 3


def _times_factor(x):
    return x * FACTOR


def remember(key, log_path):
    """Like an idempotency handler that keeps its keys in memory (and a log on disk)."""
    if key in KEYS:
        return "replayed"
    KEYS[key] = 1
    with open(log_path, "a") as handle:
        handle.write(key + "\n")
    return json.dumps({"key": key, "scaled": _times_factor(2)})


def fails():
    cache = {}
    return cache["missing"]


def sleeps():
    import time

    time.sleep(30)


def test_state_in_memory_does_not_survive_but_the_disk_does(tmp_path):
    log = tmp_path / "log.txt"
    first, second = run_fresh(remember, "k1", str(log)), run_fresh(remember, "k1", str(log))
    # In this process the second call would say "replayed"; a restarted process forgets.
    assert first.ok and second.ok and first.value == second.value
    assert json.loads(first.value) == {"key": "k1", "scaled": 6}  # helper and global sent
    assert log.read_text() == "k1\nk1\n"  # the effect happened twice: what a restart shows
    assert KEYS == {}  # and the checker's own process was never touched


def test_the_payload_names_what_the_function_uses():
    payload = program(remember)
    assert "def _times_factor" in payload["source"] and "def remember" in payload["source"]
    assert "import json as json" in payload["imports"]
    assert payload["values"] == {"KEYS": {}, "FACTOR": 3}


def test_an_exception_comes_back_as_one_line_naming_the_learner_line():
    result = run_fresh(fails)
    assert not result.ok and result.value is None
    assert result.error == "KeyError: 'missing' (in fails: return cache[\"missing\"])"


def test_a_function_that_hangs_is_killed_at_the_timeout():
    result = run_fresh(sleeps, timeout=1)
    assert result.error == "TimeoutError: did not finish within 1 s"


def test_what_cannot_be_sent_is_feedback_not_a_traceback():
    assert run_fresh(lambda: 1).error.startswith("CannotSend: a lambda's source")
    assert run_fresh(remember, lambda: 0, "x").error.startswith(
        "CannotSend: the arguments cannot be sent")


def test_a_function_defined_in_a_notebook_cell():
    shell = InteractiveShell.instance()
    shell.run_cell("import math\nSEEN = []\n"
                   "def area(r):\n    SEEN.append(r)\n    print('computing')\n"
                   "    return round(math.pi * r * r, 3)\n")
    result = run_fresh(shell.user_ns["area"], 2)
    assert (result.value, result.error, result.output) == (12.566, None, "computing\n")
    assert shell.user_ns["SEEN"] == []


def test_decorators_base_classes_and_type_hints_are_sent_too():
    # naive_charge uses Reply, a NamedTuple whose base class is named outside its methods
    from labsupport import api_communication as api

    payload = program(api.naive_charge)
    assert "from typing import NamedTuple as NamedTuple" in payload["imports"]
    assert "__name__" not in payload["values"]  # the class body's __name__ is not sent

    class FakeLedger:
        def charge(self, request, key=None):
            return {"charge_id": "ch_1", "key": key}

    reply = rebuild(payload)(FakeLedger(), "k-1", None)
    assert (type(reply).__name__, tuple(reply)) == ("Reply", (201, {"charge_id": "ch_1", "key": "k-1"}))
