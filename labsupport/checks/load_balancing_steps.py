"""The four "Your turn" step checks of ``02_load_balancing.ipynb``.

Each judges one piece of the balancer on views and latencies the notebook never showed,
on fixed seeds, so the verdict never depends on chance or on the machine:

1. least-connections from a :class:`~labsupport.load_balancing.View`;
2. power of two choices: the share each server gets, against the exact probabilities of
   two draws (with or without replacement) from the view's own RNG;
3. a latency EWMA, then peak EWMA, against the formulas on random sequences;
4. latency outlier detection: a server's median over the interval against the fleet's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import load_balancing as lb

DRAWS = 6_000  # policy calls per distribution check
MAX_SHARE_GAP = 0.025  # largest allowed gap between observed and exact pick probabilities


def _view(active: list[int], candidates: list[int] | None = None, seed: int = 0) -> lb.View:
    view = lb.View(len(active), [1.0] * len(active), random.Random(seed))
    view.active = list(active)
    view.candidates = list(range(len(active))) if candidates is None else list(candidates)
    return view


def _pick(policy: Callable[[lb.View], Any], view: lb.View) -> int:
    server = policy(view)
    if isinstance(server, bool) or not isinstance(server, (int, np.integer)):
        raise TypeError(f"returned {server!r:.40}, not a server index (int)")
    return int(server)


# --- Step 1: least-connections ------------------------------------------------------------

def _least_rows(policy: Callable[[lb.View], Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    wrong = ""
    for k in range(300):
        n = int(rng.integers(3, 12))
        active = rng.integers(0, 6, n).tolist()
        candidates = sorted(rng.choice(n, int(rng.integers(2, n + 1)), replace=False).tolist())
        view = _view(active, candidates, seed=k)
        got = _pick(policy, view)
        fewest = min(active[i] for i in candidates)
        if got not in candidates or active[got] != fewest:
            wrong = (f"active={active}, candidates={candidates}: picked {got} "
                     f"({'ejected' if got not in candidates else f'{active[got]} in flight'}); "
                     f"the fewest among candidates is {fewest}")
            break
    yield ex.Check("a candidate with the fewest in flight", not wrong,
                   "300 unseen views: always a candidate with the fewest", wrong or "always",
                   hint="Look only at view.candidates (the others are ejected), and compare "
                        "view.active[i] among them.")
    view = _view([2, 0, 3, 0, 0, 4, 0], seed=seed)
    counts = {i: 0 for i in (1, 3, 4, 6)}
    for _ in range(800):
        got = _pick(policy, view)
        counts[got] = counts.get(got, 0) + 1
    spread = min(counts[i] for i in (1, 3, 4, 6)) >= 120  # of 800, 200 expected each
    yield ex.Check("ties broken at random, with view.rng", spread,
                   "four servers tied at 0 in flight: each picked about a quarter of the time",
                   ", ".join(f"server {i}: {c}" for i, c in sorted(counts.items())),
                   hint="Always taking the first of the tied servers sends every quiet moment's "
                        "traffic to the lowest index: view.rng.choice(tied).")


def step_1_checks(policy: Any, seed: int = 21) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(policy, "your least-connections policy"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _least_rows(policy, seed), "least-connections",
                     "random views of 3 to 11 servers, some ejected")


# --- Step 2: power of two choices ------------------------------------------------------------

def two_choice_probabilities(n: int, replace: bool) -> np.ndarray:
    """P(the server with the r-th fewest in flight is picked), r = 0..n-1, when two servers
    are drawn uniformly (``replace``: possibly the same one twice) and the emptier wins."""
    r = np.arange(n)
    if replace:  # both draws rank >= r, minus both draws rank >= r + 1
        return ((n - r) ** 2 - (n - r - 1) ** 2) / n ** 2
    return 2 * (n - r - 1) / (n * (n - 1))


def _two_rows(policy: Callable[[lb.View], Any], seed: int) -> Iterator[ex.Check]:
    active = [5, 1, 7, 3, 0, 6]  # distinct: server 4 is the emptiest, then 1, 3, 0, 5, 2
    ranks = np.argsort(active)
    view = _view(active, seed=seed)
    counts = np.zeros(len(active))
    for _ in range(DRAWS):
        counts[_pick(policy, view)] += 1
    observed = counts[ranks] / DRAWS  # by rank, emptiest first
    gaps = {replace: float(np.max(np.abs(observed - two_choice_probabilities(len(active), replace))))
            for replace in (True, False)}
    gap = min(gaps.values())
    yield ex.Check("picks like two random draws, the emptier wins", gap <= MAX_SHARE_GAP,
                   f"each server's share within {MAX_SHARE_GAP} of the exact probability "
                   f"({DRAWS:,} picks)",
                   "shares by in-flight rank, emptiest first: "
                   + ", ".join(f"{p:.3f}" for p in observed)
                   + " (exact with replacement: "
                   + ", ".join(f"{p:.3f}" for p in two_choice_probabilities(len(active), True))
                   + ")", hint="Draw two candidates with view.rng.choice and return the one "
                               "with fewer in flight. Least-connections (always the emptiest) "
                               "and one random draw both miss these shares.")
    runs = [[_pick(policy, v) for _ in range(30)] for v in (_view(active, seed=seed + 2),
                                                              _view(active, seed=seed + 2))]
    yield ex.Check("draws from view.rng", runs[0] == runs[1],
                   "two views with one seed: the same 30 picks", f"{runs[0][:10]}… vs {runs[1][:10]}…",
                   hint="Use view.rng (a seeded random.Random), not the random module: a "
                        "simulation must repeat from its seed.")
    ejected = _view([0, 9, 9, 0, 9], candidates=[1, 2, 4], seed=seed)
    picks = {_pick(policy, ejected) for _ in range(200)}
    yield ex.Check("only candidates", picks <= {1, 2, 4}, "servers 1, 2 and 4 only (0 and 3 ejected)",
                   f"picked {sorted(picks)}",
                   hint="Draw from view.candidates: an ejected server drops the request.")


def step_2_checks(policy: Any, seed: int = 23) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(policy, "your power-of-two policy"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _two_rows(policy, seed), "power of two",
                     "active=[5, 1, 7, 3, 0, 6], seeded views")


# --- Step 3: EWMA and peak EWMA ---------------------------------------------------------------

def _ewma_rows(ewma: Callable[..., Any], peak: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    worst, where = 0.0, ""
    for k in range(200):
        alpha = float(rng.uniform(0.01, 0.9))
        previous = None if k % 10 == 0 else float(rng.uniform(0.01, 2.0))
        obs = float(rng.uniform(0.01, 2.0))
        gap = abs(ex.as_number(ewma(previous, obs, alpha), "a finite number of seconds") - lb.ewma_update(previous, obs, alpha))
        if gap > worst:
            worst, where = gap, f"ewma({previous}, {obs:.4f}, alpha={alpha:.3f})"
    yield ex.Check("EWMA: a step of alpha towards each observation", worst <= 1e-9,
                   "within 1e-9 of previous + alpha·(observation − previous) on 200 unseen "
                   "cases (the first observation when previous is None)",
                   f"largest gap {worst:.3g}" + (f" at {where}" if where else ""),
                   hint="previous + alpha * (observation - previous); None means no "
                        "observation yet: return the observation.")
    up = ex.as_number(peak(0.05, 0.8, 0.01, 10.0))
    yield ex.Check("peak EWMA: jumps up at once", abs(up - 0.8) <= 1e-9,
                   "0.8 after one 0.8 s response on a server averaging 0.05 s",
                   f"{up:.4f}", hint="A slower observation replaces the estimate at once: "
                                     "that is the 'peak'.")
    worst, where = 0.0, ""
    for _ in range(200):
        tau = float(rng.uniform(1.0, 20.0))
        previous = float(rng.uniform(0.2, 2.0))
        obs = float(rng.uniform(0.01, previous))  # faster: decays
        elapsed = float(rng.uniform(0.0, 3 * tau))
        gap = abs(ex.as_number(peak(previous, obs, elapsed, tau))
                  - lb.peak_ewma_update(previous, obs, elapsed, tau))
        if gap > worst:
            worst, where = gap, f"peak({previous:.3f}, {obs:.3f}, elapsed={elapsed:.2f}, tau={tau:.2f})"
    yield ex.Check("peak EWMA: decays with exp(−elapsed/τ)", worst <= 1e-9,
                   "within 1e-9 of previous·w + observation·(1 − w), w = exp(−elapsed/τ), on "
                   "200 unseen faster observations", f"largest gap {worst:.3g}"
                   + (f" at {where}" if where else ""),
                   hint="The weight of the old value depends on the time since the last "
                        "response (elapsed), not on a fixed alpha: math.exp(-elapsed / tau).")
    first = ex.as_number(peak(None, 0.3, 0.0, 10.0))
    yield ex.Check("peak EWMA: the first observation", abs(first - 0.3) <= 1e-9, "0.3",
                   f"{first:.4f}", hint="previous is None before the first response.")


def step_3_checks(answer: Any, seed: int = 25) -> Iterator[ex.Check]:
    if not (isinstance(answer, tuple) and len(answer) == 2):
        yield ex.Check("answer", False, "(ewma, peak_ewma)", f"{answer!r:.60}")
        return
    for fn, what in zip(answer, ("ewma", "peak_ewma"), strict=True):
        if bad := ex.expect_callable(fn, what):
            yield bad
            return
    yield from ex.rows_or_raised(lambda: _ewma_rows(*answer, seed), "EWMA", "random previous values, "
                     "observations, alpha, elapsed and tau")


# --- Step 4: latency outliers ----------------------------------------------------------------

def _as_servers(value: Any) -> set[int]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f"returned {value!r:.40}, not a list of server indices")
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in value):
        raise TypeError(f"returned {value!r:.60}: server indices are ints")
    return {int(v) for v in value}


def _outlier_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    wrong = ""
    for k in range(150):
        n = int(rng.integers(3, 12))
        windows = [list(rng.lognormal(math.log(0.03), 0.4, int(rng.integers(0, 60))))
                   for _ in range(n)]
        for s in rng.choice(n, int(rng.integers(0, 3)), replace=False):
            windows[s] = [x * float(rng.uniform(2.0, 12.0)) for x in windows[s]]
        factor, min_requests = float(rng.uniform(2.0, 4.0)), int(rng.integers(5, 25))
        got = _as_servers(fn(windows, factor, min_requests))
        want = set(lb.latency_outliers(windows, factor, min_requests))
        if got != want:
            wrong = (f"case {k}: {n} servers with {[len(w) for w in windows]} latencies, factor "
                     f"{factor:.2f}, min_requests {min_requests}: returned {sorted(got)}, "
                     f"expected {sorted(want)}")
            break
    yield ex.Check("the servers slower than factor × the fleet's median", not wrong,
                   "150 unseen intervals: exactly the reference's servers", wrong or "all equal",
                   hint="Per server with at least min_requests latencies: its median. The "
                        "fleet's: the median of those medians. Outliers: median > factor × fleet.")
    fast = [[0.03] * 40 for _ in range(6)]
    heavy = [list(w) for w in fast]
    heavy[2] = [0.03] * 38 + [4.0, 5.0]  # two heavy requests among fast ones
    got = _as_servers(fn(heavy, 3.0, 20))
    yield ex.Check("two heavy requests do not make a server an outlier", got == set(),
                   "no outlier: server 2's median is still 30 ms",
                   f"returned {sorted(got)}", hint="Use the median, not the mean: one 5 s "
                   "request in 40 moves the mean of a 30 ms server to 150 ms.")
    few = [list(w) for w in fast]
    few[4] = [0.9] * 5  # slow, but only 5 responses
    got = _as_servers(fn(few, 3.0, 20))
    yield ex.Check("a server with too few responses is not judged", got == set(),
                   "no outlier: server 4 has 5 latencies, fewer than min_requests 20",
                   f"returned {sorted(got)}", hint="Skip servers with fewer than min_requests "
                   "latencies, for the fleet's median too.")


def step_4_checks(fn: Any, seed: int = 27) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your outlier detector"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _outlier_rows(fn, seed), "latency outliers",
                     "random intervals of 3 to 11 servers")
