"""Wrong answers for the noon exercise of ``02_load_balancing.ipynb``.

Each must be told "not yet", with the named row failing. The checker runs noon over three
seeds and a variant the notebook never shows (8 servers, server 6 at 1/6 speed).
"""

from __future__ import annotations

from labsupport import load_balancing as lb
from labsupport.checks import load_balancing as checks

from . import Exercise, WrongAnswer


def starter() -> lb.Balancer:
    """The notebook's untouched starter cell: round-robin, no outlier detection."""

    def my_policy(view: lb.View) -> int:
        # Pick the server for the next request; return one of view.candidates.
        turn = view.state.get("turn", 0)
        view.state["turn"] = turn + 1
        return view.candidates[turn % len(view.candidates)]

    return lb.Balancer(policy=my_policy, outlier_detection=None)


def avoid_server_3() -> lb.Balancer:
    """Least-connections that never picks server 3: the slow server of the notebook's noon."""

    def policy(view: lb.View) -> int:
        others = [i for i in view.candidates if i != 3] or view.candidates
        return min(others, key=lambda i: view.active[i])

    return lb.Balancer(policy)


def answer_key() -> lb.Balancer:
    from labsupport.solutions import load_balancing as solution

    return solution.answer


EXERCISES = [
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=answer_key,
        gallery=[
            WrongAnswer("starter", "round-robin gives the slow server its full share: its "
                        "queue grows all noon and its users wait minutes",
                        starter, failing_row="overall p99"),
            WrongAnswer("least-connections alone", "counting requests in flight cannot tell "
                        "busy from slow: the slow server still gets a trickle, each ten times "
                        "slower", lambda: lb.least_connections,
                        failing_row="requests slower than 5×"),
            WrongAnswer("Envoy's default outlier detection", "the slow server returns no 5xx, "
                        "so error-based ejection never fires",
                        lambda: lb.Balancer(lb.least_connections, lb.OutlierDetection()),
                        failing_row="requests slower than 5×"),
            WrongAnswer("hard-coded: never server 3", "it knows the notebook's slow server, "
                        "not the fleet: another server slows down tomorrow",
                        avoid_server_3, failing_row="unseen variant"),
            WrongAnswer("an unknown server", "a server index outside the fleet drops every "
                        "request", lambda: lb.Balancer(lambda view: 99),
                        failing_row="no request dropped"),
        ],
    ),
]
