"""Wrong answers for the noon exercise of ``02_load_balancing.ipynb``.

Each must be told "not yet", with the named row failing. The checker runs noon over three
seeds and a variant the notebook never shows (8 servers, server 6 at 1/6 speed).
"""

from __future__ import annotations

import math
import random
import statistics

from labsupport import load_balancing as lb
from labsupport.checks import load_balancing as checks
from labsupport.solutions import load_balancing as key

from . import Exercise, WrongAnswer, step


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


def all_to_server_0() -> lb.Balancer:
    """Every request to server 0: "as good as itself" when judged against its own run."""
    return lb.Balancer(lambda view: 0)


def all_to_half() -> lb.Balancer:
    """Least-connections over the first half of the fleet only."""

    def policy(view: lb.View) -> int:
        half = [i for i in view.candidates if i < view.n_servers // 2] or view.candidates
        return min(half, key=lambda i: view.active[i])

    return lb.Balancer(policy)


def only_servers_heard_from() -> lb.Balancer:
    """Ejects, in effect, every server it has not heard from: the first to answer gets all."""

    def policy(view: lb.View) -> int:
        heard = [i for i in view.candidates if view.completed[i]]
        return min(heard, key=lambda i: view.latency_ewma[i]) if heard else view.candidates[0]

    return lb.Balancer(policy)


def answer_key() -> lb.Balancer:
    from labsupport.solutions import load_balancing as solution

    return solution.answer


# --- the steps ------------------------------------------------------------------------------

def lc_first_of_ties():
    def policy(view):
        return min(view.candidates, key=lambda i: view.active[i])  # always the lowest index
    return policy


def lc_ignores_ejection():
    def policy(view):
        fewest = min(view.active)
        return view.rng.choice([i for i in range(view.n_servers) if view.active[i] == fewest])
    return policy


def lc_most():
    def policy(view):
        most = max(view.active[i] for i in view.candidates)
        return view.rng.choice([i for i in view.candidates if view.active[i] == most])
    return policy


def p2c_one_draw():
    def policy(view):
        return view.rng.choice(view.candidates)  # random: one draw, no comparison
    return policy


def p2c_global_random():
    def policy(view):
        a, b = random.choice(view.candidates), random.choice(view.candidates)
        return a if view.active[a] <= view.active[b] else b
    return policy


def p2c_busier_wins():
    def policy(view):
        a, b = view.rng.choice(view.candidates), view.rng.choice(view.candidates)
        return a if view.active[a] >= view.active[b] else b
    return policy


def ewma_backwards():
    def ewma(previous, observation, alpha):
        return observation if previous is None else observation + alpha * (previous - observation)
    return ewma, key.peak_ewma


def peak_without_peak():
    def peak(previous, observation, elapsed, tau):
        if previous is None:
            return observation
        w = math.exp(-elapsed / tau)
        return previous * w + observation * (1 - w)  # no jump up
    return key.ewma, peak


def peak_fixed_alpha():
    def peak(previous, observation, elapsed, tau):
        if previous is None or observation > previous:
            return observation
        return previous + 0.1 * (observation - previous)  # ignores elapsed time
    return key.ewma, peak


def outliers_by_mean():
    def outliers(windows, factor, min_requests):
        means = {s: statistics.fmean(w) for s, w in enumerate(windows) if len(w) >= min_requests}
        if len(means) < 2:
            return []
        fleet = statistics.median(means.values())
        return [s for s, m in means.items() if m > factor * fleet]
    return outliers


def outliers_judge_everyone():
    def outliers(windows, factor, min_requests):
        medians = {s: statistics.median(w) for s, w in enumerate(windows) if w}
        if len(medians) < 2:
            return []
        fleet = statistics.median(medians.values())
        return [s for s, m in medians.items() if m > factor * fleet]
    return outliers


def outliers_pooled_median():
    def outliers(windows, factor, min_requests):
        judged = {s: w for s, w in enumerate(windows) if len(w) >= min_requests}
        pooled = [x for w in judged.values() for x in w]  # the median of all requests
        if len(judged) < 2:
            return []
        fleet = statistics.median(pooled)
        return [s for s, w in judged.items() if statistics.median(w) > factor * fleet]
    return outliers


STEPS = [
    step(checks, 1, lambda: key.least_connections, [
        WrongAnswer("first of the ties", "every quiet moment goes to the lowest index",
                    lc_first_of_ties, "ties broken at random"),
        WrongAnswer("ignores ejection", "sends requests to ejected servers: they are dropped",
                    lc_ignores_ejection, "fewest in flight"),
        WrongAnswer("the most in flight", "piles onto the busiest server", lc_most,
                    "fewest in flight"),
    ]),
    step(checks, 2, lambda: key.power_of_two, [
        WrongAnswer("one draw", "random, not two choices: the shares stay flat",
                    p2c_one_draw, "two random draws"),
        WrongAnswer("the random module", "not reproducible from the seed", p2c_global_random,
                    "view.rng"),
        WrongAnswer("the busier wins", "two choices, the wrong one", p2c_busier_wins,
                    "two random draws"),
    ]),
    step(checks, 3, lambda: (key.ewma, key.peak_ewma), [
        WrongAnswer("alpha on the old value", "follows new observations at 1 - alpha",
                    ewma_backwards, "EWMA: a step"),
        WrongAnswer("no peak", "a slow response is averaged away, not seen at once",
                    peak_without_peak, "jumps up"),
        WrongAnswer("a fixed alpha", "decay must depend on the time since the last response",
                    peak_fixed_alpha, "decays"),
    ]),
    step(checks, 4, lambda: key.latency_outliers, [
        WrongAnswer("the mean", "one heavy request ejects a healthy server", outliers_by_mean,
                    "heavy requests"),
        WrongAnswer("judges servers with too few responses", "five responses are noise",
                    outliers_judge_everyone, "too few responses"),
        WrongAnswer("the median of all requests", "not the fleet's median of medians",
                    outliers_pooled_median, "factor × the fleet"),
    ]),
]


EXERCISES = [
    *STEPS,
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
            WrongAnswer("return 0", "every request to one server: its queue grows all noon",
                        all_to_server_0, failing_row="takes its part"),
            WrongAnswer("half the fleet", "the other half idles while the first half queues",
                        all_to_half, failing_row="takes its part"),
            WrongAnswer("random", "a random server ignores load and speed alike",
                        lambda: lb.random_choice, failing_row="overall p99"),
            WrongAnswer("plain round-robin", "the slow server gets its full turn",
                        lambda: lb.round_robin, failing_row="overall p99"),
            WrongAnswer("only servers it has heard from", "the first server to answer gets "
                        "everything", only_servers_heard_from, failing_row="takes its part"),
        ],
    ),
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz",
        check=lambda a: checks.check_quiz(a),
        answer_key=lambda: dict(key.QUIZ_ANSWERS),
        gallery=[
            WrongAnswer("unanswered", "the starter answers nothing", lambda: {}, "slow-but-up"),
            WrongAnswer("d=1 for two choices", "10 is one random choice at 90% load",
                        lambda: {**key.QUIZ_ANSWERS, "two-choices": 10.0}, "two-choices"),
            WrongAnswer("pre-1.31 Envoy", "since 1.31 the 10% cap rounds down",
                        lambda: {**key.QUIZ_ANSWERS, "envoy-131": 1}, "envoy-131"),
        ],
    ),
]
