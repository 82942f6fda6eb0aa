"""Checks of ``02_load_balancing.ipynb``: the simulator against queueing theory, and the noon exercise.

The theory the simulator is checked against (by the notebook's "Check it against queueing
theory" step and by ``tests/test_load_balancing.py``): M/M/1, M/M/c with the Erlang C
formula, and Mitzenmacher's supermarket model; plus a vectorized path for state-blind
policies on single-worker servers, where each server is a Lindley recursion,
``done_k = max(arrival_k, done_{k-1}) + size_k``, which numpy solves with a cumulative
maximum: :func:`long_run_mean_latency` uses it to reach the 10^8 requests that a queue at
99% utilization needs before its mean settles.

The exercise: noon traffic on a fleet where one server has slowed down but stays up
(:data:`NOON`, and a variant the notebook never shows, :data:`UNSEEN`).
:func:`check_exercise` runs the learner's balancer on both over :data:`CHECK_SEEDS` and
judges it against a **fixed reference**: least-connections on the same fleet with every
server healthy, for the same traffic and seed (never against the learner's own healthy
run, which lets "everything to server 0" look as good as itself). :func:`noon_report`
gives the numbers it judges: ``checks.noon_report(my_answer, checks.UNSEEN, seed=12)``.
The four step checks are in ``load_balancing_steps.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import load_balancing as lb
from labsupport import quiz as qz
from labsupport.checks import load_balancing_steps as steps

EXERCISE_ID = "02_load_balancing"

# --- the vectorized path: Lindley's recursion in numpy -------------------------------


def fcfs_single_worker(arrivals: np.ndarray, work: np.ndarray, free_at: float = 0.0) -> np.ndarray:
    """Completion times of one single-worker FCFS server, without a Python loop.

    Lindley: ``done_k = max(arrival_k, done_{k-1}) + work_k``. Unrolled, with
    ``C_k = work_1 + ... + work_k``, that is ``done_k = C_k + max(free_at,
    max_{j<=k}(arrival_j - C_{j-1}))``: a cumulative sum and a cumulative maximum.
    """
    cum = np.cumsum(work)
    return cum + np.maximum(free_at, np.maximum.accumulate(arrivals - (cum - work)))


STATIC_ASSIGNERS: dict[lb.Policy, Callable[[np.random.Generator, int, int, int], np.ndarray]] = {
    # policy -> (rng, first request number, how many, n_servers) -> server of each request
    lb.round_robin: lambda rng, first, m, n: (np.arange(first, first + m) % n),
    lb.random_choice: lambda rng, first, m, n: rng.integers(0, n, m),
}


def long_run_mean_latency(cluster: lb.Cluster, policy: lb.Policy, n_requests: int, *,
                          seed: int = 0, warmup: int = 0, chunk: int = 5_000_000) -> float:
    """Mean latency over many requests for a state-blind policy on single-worker servers.

    For ``round_robin`` and ``random_choice`` the server of a request does not depend on
    the state, so each server is an independent Lindley recursion: this runs 10^8 requests
    in seconds, in chunks, carrying each server's free time across chunks. The event
    simulator gives the same latencies for the same draws (the tests check it).
    """
    assign = STATIC_ASSIGNERS.get(policy)
    if assign is None or cluster.workers != 1 or cluster.error_rates is not None:
        raise ValueError("long_run_mean_latency needs round_robin or random_choice, workers=1")
    rng = np.random.default_rng(seed)
    speeds = np.asarray(cluster.speed_list())
    free_at = np.zeros(cluster.n_servers)  # when each server finishes its backlog
    now, total, counted, first = 0.0, 0.0, 0, 0
    while first < n_requests + warmup:
        m = min(chunk, n_requests + warmup - first)
        arrivals = now + np.cumsum(rng.exponential(1.0 / cluster.arrival_rate, m))
        now = float(arrivals[-1])
        work = cluster.service.sample(rng, m)
        servers = assign(rng, first, m, cluster.n_servers)
        latency = np.empty(m)
        for s in range(cluster.n_servers):
            mine = servers == s
            if not mine.any():
                continue
            done = fcfs_single_worker(arrivals[mine], work[mine] / speeds[s], free_at[s])
            free_at[s] = done[-1]
            latency[mine] = done - arrivals[mine]
        skip = max(0, warmup - first)  # why: the first requests meet an empty system
        total += float(latency[skip:].sum())
        counted += m - min(skip, m)
        first += m
    return total / counted


# --- queueing theory ------------------------------------------------------------------


def mm1_mean_time(lam: float, mu: float) -> float:
    """M/M/1 mean time in system: W = 1 / (mu - lam). At rho = 0.9 that is 10 / mu."""
    if lam >= mu:
        return math.inf
    return 1.0 / (mu - lam)


def erlang_c(c: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load a = lam/mu < c)."""
    if offered >= c:
        return 1.0
    # Erlang B by its stable recursion, then C = B / (1 - rho (1 - B)).
    b = 1.0
    for k in range(1, c + 1):
        b = offered * b / (k + offered * b)
    rho = offered / c
    return b / (1 - rho * (1 - b))


def mmc_mean_time(lam: float, mu: float, c: int) -> float:
    """M/M/c mean time in system: W = C(c, a) / (c mu - lam) + 1 / mu (Erlang C)."""
    if lam >= c * mu:
        return math.inf
    return erlang_c(c, lam / mu) / (c * mu - lam) + 1.0 / mu


def supermarket_mean_time(lam: float, d: int, terms: int = 100_000) -> float:
    """Mitzenmacher's supermarket model, n -> infinity, service rate 1, arrivals lam per server.

    T_d(lam) = sum_{i>=1} lam^((d^i - d)/(d - 1)) for d >= 2; for d = 1 it is M/M/1, 1/(1-lam).
    """
    if d == 1:
        return 1.0 / (1.0 - lam)
    total = 0.0
    for i in range(1, terms + 1):
        exponent = (d ** i - d) / (d - 1)
        term = lam ** exponent
        total += term
        if term < 1e-16:
            break
    return total



# --- the scenario exercise ------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """Noon traffic on a fleet where one server has slowed down but stays up."""

    name: str
    n_servers: int
    noon_rate: float  # requests per second at noon (three times the 9am rate)
    slow_server: int
    slowdown: float  # 10 means every request takes ten times as long there
    workers: int = 4  # concurrent requests per server
    service: lb.HeavyTailed = field(default_factory=lb.HeavyTailed)
    n_requests: int = 40_000  # about a minute of noon traffic, after the slowdown
    warm_seconds: float = 10.0  # healthy noon traffic first, so the balancer has history

    def cluster(self, *, slow: bool = True, traffic: float = 1.0) -> lb.Cluster:
        """The fleet at noon (``traffic`` scales the rate: 1/3 is 9am).

        The slow server slows down ``warm_seconds`` into the run.
        """
        base = lb.Cluster(n_servers=self.n_servers, arrival_rate=self.noon_rate * traffic,
                          service=self.service, workers=self.workers,
                          slow_from=self.warm_seconds)
        return base.with_slow_server(self.slow_server, 1.0 / self.slowdown) if slow else base

    def healthy_only_utilization(self) -> float:
        """Noon utilization if the slow server took no traffic at all."""
        capacity = (self.n_servers - 1) * self.workers / self.service.mean  # requests/s
        return self.noon_rate / capacity


NOON = Scenario("noon, server 3 at 1/10 speed", n_servers=10, noon_rate=600.0,
                slow_server=3, slowdown=10.0)
# The checker also runs a variant the notebook never shows: another slow server,
# another slowdown, another fleet size.
UNSEEN = Scenario("unseen variant: 8 servers, server 6 at 1/6 speed", n_servers=8,
                  noon_rate=450.0, slow_server=6, slowdown=6.0)
SCENARIOS = {"NOON": NOON, "UNSEEN": UNSEEN}  # by their names in this module
CHECK_SEEDS = (11, 12, 13)
SLOW_FACTOR = 5.0  # a request is "slow" if it takes more than 5x the healthy median
MAX_SLOW_FRACTION = 0.01
MAX_P99_RATIO = 2.0
MAX_HEALTHY_EJECTED = 0.10  # fraction of the noon window a healthy server may spend ejected
SHARE_BOUNDS = (0.25, 2.5)  # each healthy server's share, as a multiple of 1 / (healthy servers)


def after(result: lb.Result, t: float) -> lb.Result:
    """Only the requests of ``result`` that arrived at or after ``t`` seconds."""
    keep = result.arrival >= t
    arr = result.arrival[keep]
    return lb.Result(arrival=arr, latency=result.latency[keep], server=result.server[keep],
                     error=result.error[keep], n_servers=result.n_servers,
                     ejections=result.ejections,
                     duration=float(arr[-1] - arr[0]) if arr.size > 1 else 0.0)


def ejected_seconds(result: lb.Result, server: int) -> float:
    """Seconds (within the kept requests' time span) that ``server`` spent ejected."""
    if not result.arrival.size:
        return 0.0
    begin, end = float(result.arrival[0]), float(result.arrival[-1])
    return sum(max(0.0, min(u, end) - max(s, begin))
               for srv, s, u in result.ejections if srv == server)


@dataclass(frozen=True)
class NoonReport:
    """One policy on one scenario and seed: the numbers the checker judges."""

    scenario: str
    seed: int
    p99_slow_fleet: float  # seconds, all requests, slow server present
    p99_healthy_fleet: float  # seconds: the reference, least-connections, every server healthy
    median_healthy_fleet: float  # seconds, the same reference run
    slow_fraction: float  # requests slower than SLOW_FACTOR x the reference's median
    slow_server_share: float  # fraction of requests the slow server took
    slow_server_p99: float  # seconds, p99 of the slow server's users
    dropped: int
    worst_healthy_ejected: float  # fraction of the window, worst healthy server
    healthy_shares: tuple[float, ...]  # each healthy server's share / its fair share


@cache
def reference(scenario: Scenario, seed: int, n: int) -> tuple[float, float]:
    """(p99, median) in seconds of the fixed reference: least-connections at noon with every
    server healthy, the same traffic and seed. Computed once per process."""
    healthy = after(lb.simulate(scenario.cluster(slow=False), lb.least_connections, n, seed=seed),
                    scenario.warm_seconds)
    return healthy.percentile(99), healthy.percentile(50)


def noon_report(balancer: lb.Balancer | lb.Policy, scenario: Scenario = NOON, seed: int = 11,
                n_requests: int | None = None) -> NoonReport:
    """Run ``balancer`` at noon with the slow server; return the numbers, against the
    reference (:func:`reference`)."""
    n = (n_requests or scenario.n_requests) + int(scenario.noon_rate * scenario.warm_seconds)
    p99_ref, median_h = reference(scenario, seed, n)
    # Judge only what happens once the server has slowed down.
    slow = after(lb.simulate(scenario.cluster(slow=True), balancer, n, seed=seed),
                 scenario.warm_seconds)
    served = slow.served()
    others = [s for s in range(scenario.n_servers) if s != scenario.slow_server]
    window = max(slow.duration, 1e-9)
    fair = 1.0 / len(others)
    return NoonReport(
        scenario=scenario.name, seed=seed,
        p99_slow_fleet=slow.percentile(99) if served.size else math.inf,
        p99_healthy_fleet=p99_ref, median_healthy_fleet=median_h,
        # A dropped request never got an answer: it counts as slow too.
        slow_fraction=float(((served > SLOW_FACTOR * median_h).sum() + slow.dropped)
                            / max(1, slow.server.size)),
        slow_server_share=float(slow.share()[scenario.slow_server]),
        slow_server_p99=slow.percentile(99, scenario.slow_server),
        dropped=slow.dropped,
        worst_healthy_ejected=max(ejected_seconds(slow, s) for s in others) / window,
        healthy_shares=tuple(float(slow.share()[s]) / fair for s in others))


def _as_balancer(answer: Any) -> lb.Balancer:
    if isinstance(answer, lb.Balancer):
        return answer
    return lb.Balancer(answer)


def _reproduce(var: str, seed: int) -> str:
    return f"checks.noon_report(my_answer, checks.{var}, seed={seed})"


def _p99_ratio(r: NoonReport) -> float:
    return r.p99_slow_fleet / r.p99_healthy_fleet if r.p99_healthy_fleet else math.inf


def _scenario_checks(var: str, outcomes: dict[int, NoonReport | Exception]) -> list[ex.Check]:
    """The two rows of one scenario, judged on its seeds; a seed that raised fails them."""
    sc = SCENARIOS[var]
    raised = [(seed, o) for seed, o in outcomes.items() if isinstance(o, Exception)]
    mine = [o for o in outcomes.values() if isinstance(o, NoonReport)]
    seeds = ", ".join(map(str, CHECK_SEEDS))

    def judge(name: str, key: Callable[[NoonReport], float],
              check: Callable[[NoonReport], ex.Check]) -> ex.Check:
        if raised:  # the first seed that raised names the input
            seed, exc = raised[0]
            return ex.raised(name, exc, case=f"{sc.name}, seed {seed}",
                             reproduce=_reproduce(var, seed))
        worst = max(mine, key=key)
        return ex.judge(name, lambda: check(worst),
                        case=f"{sc.name}, seed {worst.seed} (the worst of seeds {seeds})",
                        reproduce=_reproduce(var, worst.seed))

    def p99(worst: NoonReport) -> ex.Check:
        ratio = _p99_ratio(worst)
        return ex.Check(
            f"{sc.name}: overall p99", ratio <= MAX_P99_RATIO,
            f"≤ {MAX_P99_RATIO:.0f}× the reference's p99 (least-connections, every server "
            "healthy, the same traffic)",
            f"{worst.p99_slow_fleet:.3f} s vs {worst.p99_healthy_fleet:.3f} s "
            f"reference ({ratio:.1f}×, worst of {len(mine)} seeds); users of the slow server: "
            f"p99 {worst.slow_server_p99:.2f} s, "
            f"{100 * worst.slow_server_share:.1f}% of requests",
            hint="Look at how much traffic the slow server still gets, and whether your "
                 "policy ever learns that it is slow (View.latency_ewma).")

    def slow(worst: NoonReport) -> ex.Check:
        return ex.Check(
            f"{sc.name}: requests slower than {SLOW_FACTOR:.0f}× the healthy median",
            worst.slow_fraction <= MAX_SLOW_FRACTION,
            f"≤ {100 * MAX_SLOW_FRACTION:.0f}% of requests",
            f"{100 * worst.slow_fraction:.2f}% slower than "
            f"{SLOW_FACTOR * worst.median_healthy_fleet * 1000:.0f} ms (5× the reference's median) "
            f"(slow server took {100 * worst.slow_server_share:.1f}% of requests)",
            hint="Least-connections only sends the slow server a bit less; the balancer has "
                 "to notice the slowness: latency-based outlier detection, or weigh servers "
                 "by their observed latency.")

    low, high = SHARE_BOUNDS

    def off(r: NoonReport) -> float:  # how far the worst healthy server is outside the bounds
        return max(max(low - x, x - high, 0.0) for x in r.healthy_shares)

    def shares(worst: NoonReport) -> ex.Check:
        lo, hi = min(worst.healthy_shares), max(worst.healthy_shares)
        return ex.Check(
            f"{sc.name}: every healthy server takes its part",
            lo >= low and hi <= high,
            f"each healthy server between {low:g}× and {high:g}× its fair share "
            f"(1/{len(worst.healthy_shares)} of the requests)",
            f"from {lo:.2f}× to {hi:.2f}× its fair share (worst of {len(mine)} seeds)",
            hint="A fleet is there to be used: sending everything to one server, or to a few, "
                 "overloads them while the others idle.")

    return [judge(f"{sc.name}: overall p99", _p99_ratio, p99),
            judge(f"{sc.name}: requests slower than {SLOW_FACTOR:.0f}× the healthy median",
                  lambda r: r.slow_fraction, slow),
            judge(f"{sc.name}: every healthy server takes its part", off, shares)]


def _fleet_checks(outcomes: dict[tuple[str, int], NoonReport | Exception]) -> list[ex.Check]:
    """Dropped requests and ejected healthy servers, over every run that finished."""
    runs = [(var, r) for (var, _), r in outcomes.items() if isinstance(r, NoonReport)]
    if not runs:
        return [ex.Check(name, False, "a finished run", "every run raised: see the rows above")
                for name in ("no request dropped", "no healthy server ejected for long")]
    raised = len(outcomes) - len(runs)
    also = f" ({raised} runs raised: see the rows above)" if raised else ""

    def where(run: tuple[str, NoonReport]) -> dict[str, str]:
        var, r = run
        return {"case": f"{r.scenario}, seed {r.seed}", "reproduce": _reproduce(var, r.seed)}

    dropped = sum(r.dropped for _, r in runs)
    most_dropped = max(runs, key=lambda run: run[1].dropped)
    worst_run = max(runs, key=lambda run: run[1].worst_healthy_ejected)
    worst_ej = worst_run[1]
    return [
        ex.judge("no request dropped", lambda: ex.Check(
            "no request dropped", dropped == 0, "0 dropped",
            f"{dropped} dropped over {len(runs)} runs{also}",
            hint="Return a server from view.candidates: an ejected or unknown server drops "
                 "the request."), **where(most_dropped)),
        ex.judge("no healthy server ejected for long", lambda: ex.Check(
            "no healthy server ejected for long",
            worst_ej.worst_healthy_ejected <= MAX_HEALTHY_EJECTED,
            f"≤ {100 * MAX_HEALTHY_EJECTED:.0f}% of the noon window",
            f"{100 * worst_ej.worst_healthy_ejected:.1f}% ({worst_ej.scenario}, "
            f"seed {worst_ej.seed}){also}",
            hint="A heavy request makes a healthy server look slow for a moment: judge a "
                 "server on its median over an interval, or raise the latency factor."),
            **where(worst_run)),
    ]


def _checks(answer: Any) -> list[ex.Check]:
    policy = answer.policy if isinstance(answer, lb.Balancer) else answer
    bad = ex.expect_callable(policy, "your policy")
    if bad:
        return [bad]
    balancer = _as_balancer(answer)
    # Every (scenario, seed) runs on its own: one that raises fails only its rows.
    outcomes: dict[tuple[str, int], NoonReport | Exception] = {}
    for var, sc in SCENARIOS.items():
        for seed in CHECK_SEEDS:
            try:
                outcomes[var, seed] = noon_report(balancer, sc, seed)
            except Exception as exc:  # noqa: BLE001 - the learner's error is that row's feedback
                outcomes[var, seed] = exc
    checks: list[ex.Check] = []
    for var in SCENARIOS:
        checks += _scenario_checks(var, {seed: o for (v, seed), o in outcomes.items()
                                         if v == var})
    return checks + _fleet_checks(outcomes)


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's balancer (a policy function, or a Balancer) on the noon scenario."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# --- the steps and the review quiz ----------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: least-connections, 2: power of two, 3: EWMA and peak
    EWMA, 4: latency outliers)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)


QUIZ = qz.Quiz(EXERCISE_ID, {
    "slow-but-up": qz.Choice(
        "One of ten servers answers ten times slower but never fails. Why does least-"
        "connections still hurt its users?",
        ("It does not: least-connections sends the slow server no traffic at all",
         "Counting requests in flight cannot tell busy from slow: the slow server still "
         "gets a share, and every request it gets takes ten times as long",
         "Least-connections is round-robin in disguise",
         "Health checks eject the slow server, so its users are dropped"),
        1, "Requests pile up in flight on the slow server, so it gets fewer new ones, but "
           "not none: in this notebook it still took about 1.4% of noon's requests, each ten "
           "times slower, which put 1.5% of all requests over five times the healthy median."),
    "two-choices": qz.Numeric(
        "The supermarket model: n → ∞ servers at 90% load (λ = 0.9, service rate 1), each "
        "request samples d servers and joins the shortest queue. One random choice (d = 1) "
        "keeps a request 10 service times. What does d = 2 give, in service times?",
        2.614, 0.1, "service times",
        "T_d(λ) = Σ_{i≥1} λ^((d^i − d)/(d − 1)); for d = 2 the exponents are 0, 2, 6, 14, …: "
        "1 + 0.81 + 0.531 + 0.229 + 0.043 + … ≈ 2.61. One extra sample removes most of the "
        "queueing; at λ = 0.99 it is 5.43 against 100."),
    "error-ejection": qz.Choice(
        "Outlier detection with Envoy's defaults (eject after 5 consecutive 5xx) runs in "
        "front of a server that is ten times slower but answers every request with 200. "
        "What happens?",
        ("It is ejected after 5 slow responses", "It is ejected once its success rate drops",
         "Nothing: it returns no errors, so no error-based detector fires",
         "Envoy's health checks remove it within one interval"),
        2, "Envoy's detectors count errors (consecutive 5xx, gateway failures, success rate, "
           "failure percentage), not latency: a slow host is caught only once requests time "
           "out. That is why this notebook's balancer has to look at latency."),
    "envoy-131": qz.Choice(
        "Envoy 1.31 or later, outlier detection at its defaults (max_ejection_percent 10, "
        "always_eject_one_host false), a cluster of 8 hosts, one of which fails every "
        "request. How many hosts can Envoy eject?",
        ("None: 10% of 8 hosts rounds down to 0", "One: at least one host is always ejected",
         "Two", "All failing hosts, the cap only applies to healthy ones"),
        0, "A host is ejected only if (ejected + 1) / hosts stays within 10%: 1/8 is 12.5%, "
           "so none may be. The cap became strict in Envoy 1.28 (before, at least one host was "
           "always allowed); since 1.31 that needs always_eject_one_host, or a higher "
           "max_ejection_percent."),
    "peak-ewma": qz.Choice(
        "A server has averaged 50 ms. One response takes 800 ms. What do a plain EWMA "
        "(α = 0.1) and a peak EWMA estimate right after it?",
        ("Both about 125 ms", "EWMA 125 ms; peak EWMA 800 ms, decaying back as fast "
         "responses arrive", "EWMA 800 ms; peak EWMA 125 ms", "Both 800 ms"),
        1, "The EWMA moves 10% of the way: 50 + 0.1 × 750 = 125 ms. Peak EWMA jumps to the "
           "slower observation at once and decays with exp(−elapsed/τ), so a server that "
           "turns slow is avoided at its first slow response, and forgiven over time."),
})
