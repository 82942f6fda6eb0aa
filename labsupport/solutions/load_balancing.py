"""Answer key for ``02_load_balancing.ipynb``: the four steps, the scenario and the quiz.

The scenario's policy is least-connections that also weighs each server by how slow its
responses have been: cost = (requests in flight + 1) x recent latency (an exponentially
weighted mean, EWMA). A server that answers ten times slower needs ten times fewer
requests in flight before it is chosen, so it keeps a trickle of traffic (enough to notice
when it recovers) instead of its full share: the idea behind Finagle's and Linkerd's
"peak EWMA" balancers. On top, a latency-based outlier check ejects a server whose median
latency over an interval is more than three times the fleet's.
"""

from __future__ import annotations

import math

import numpy as np

from labsupport import load_balancing as lb

# --- Step 1: least-connections ------------------------------------------------------------

def least_connections(view: lb.View) -> int:
    """A candidate with the fewest requests in flight; ties broken with view.rng."""
    fewest = min(view.active[i] for i in view.candidates)
    return view.rng.choice([i for i in view.candidates if view.active[i] == fewest])


# --- Step 2: power of two choices ----------------------------------------------------------

def power_of_two(view: lb.View) -> int:
    """Two random candidates; the one with fewer in flight."""
    a, b = view.rng.choice(view.candidates), view.rng.choice(view.candidates)
    return a if view.active[a] <= view.active[b] else b


# --- Step 3: EWMA and peak EWMA ---------------------------------------------------------------

def ewma(previous: float | None, observation: float, alpha: float) -> float:
    return observation if previous is None else previous + alpha * (observation - previous)


def peak_ewma(previous: float | None, observation: float, elapsed: float, tau: float) -> float:
    if previous is None or observation > previous:
        return observation  # a slower response raises the estimate at once
    w = math.exp(-elapsed / tau)  # the old value's weight fades with time, not with count
    return previous * w + observation * (1 - w)


# --- Step 4: latency outliers -----------------------------------------------------------------

def latency_outliers(windows: list[list[float]], factor: float, min_requests: int) -> list[int]:
    medians = {s: float(np.median(w)) for s, w in enumerate(windows) if len(w) >= min_requests}
    if len(medians) < 2:
        return []
    fleet = float(np.median(list(medians.values())))
    return [s for s, m in medians.items() if m > factor * fleet]


# --- The scenario ---------------------------------------------------------------------------

def latency_aware_least_connections(view: lb.View) -> int:
    """The usable server with the lowest (in flight + 1) x latency EWMA."""
    known = [view.latency_ewma[i] for i in view.candidates if view.completed[i]]
    # A server with no responses yet gets the typical latency of the others, not zero:
    # zero would make it look infinitely fast and send it every request until it answers.
    typical = sorted(known)[len(known) // 2] if known else 1.0  # seconds

    def cost(i: int) -> float:
        latency = view.latency_ewma[i] if view.completed[i] else typical
        return (view.active[i] + 1) * latency

    return min(view.candidates, key=cost)


# Belt and braces: outlier detection with a latency check, for a server that is slow on
# every request. Since Envoy 1.28 the 10% cap rounds down: a fleet of 8 may eject nobody
# unless always_eject_one_host is set, so it is.
answer = lb.Balancer(policy=latency_aware_least_connections,
                     outlier_detection=lb.OutlierDetection(latency_factor=3.0,
                                                           always_eject_one_host=True),
                     ewma_alpha=0.1)


# --- The review quiz --------------------------------------------------------------------

QUIZ_ANSWERS = {"slow-but-up": 1, "two-choices": 2.6, "error-ejection": 2, "envoy-131": 0,
                "peak-ewma": 1}
