"""Backs ``02_load_balancing.ipynb``: a load-balancer simulator, its policies and the exercise.

The model: requests arrive as a Poisson process at a load balancer in front of N servers.
Each server has a few worker slots (``workers``) and a first-come-first-served queue in
front of them; a server with speed factor 0.1 takes ten times as long for every request
while it stays up. The balancer picks a server for each request with a *policy*, a plain
function of a :class:`View` (what the balancer knows: in-flight requests per server,
observed latencies, which servers are ejected) that returns a server index.

Because a request never moves once it is dispatched, the completion time of a request is
known the moment it is dispatched: start = when the earliest worker of that server frees,
done = start + size / speed. The simulator therefore only keeps a heap of completion
times, which it replays (to update in-flight counts and latency observations) before each
arrival. That is what makes 100,000 requests take well under a second in plain Python.

Policies that ignore server state (round-robin, random, weighted round-robin) on
single-worker servers can be simulated without the event loop at all: each server is then
a Lindley recursion, ``done_k = max(arrival_k, done_{k-1}) + size_k``, which numpy solves
with a cumulative maximum. :func:`long_run_mean_latency` uses that to reach the 10^8
requests that a queue at 99% utilization needs before its mean settles.

Theory the simulator is checked against (``tests/test_load_balancing.py``):
M/M/1, M/M/c with the Erlang C formula, and Mitzenmacher's supermarket model.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from labsupport import exercises as ex

EXERCISE_ID = "02_load_balancing"

# --- service-time distributions ------------------------------------------------------


@dataclass(frozen=True)
class Exponential:
    """Exponential request sizes: what queueing theory's M/M/c assumes."""

    mean: float = 1.0  # seconds of work on a server of speed 1

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)


@dataclass(frozen=True)
class HeavyTailed:
    """Mostly short requests (tens of milliseconds), a few heavy ones (seconds).

    A light request's size is log-normal around ``light_median``; with probability
    ``heavy_prob`` a request is heavy, uniform between ``heavy_low`` and ``heavy_high``.
    """

    light_median: float = 0.030  # seconds
    light_sigma: float = 0.5  # spread of log(size) for light requests
    heavy_prob: float = 0.002  # 1 request in 500 is heavy
    heavy_low: float = 1.0  # seconds
    heavy_high: float = 5.0  # seconds

    @property
    def mean(self) -> float:
        light = self.light_median * math.exp(self.light_sigma ** 2 / 2)
        heavy = (self.heavy_low + self.heavy_high) / 2
        return (1 - self.heavy_prob) * light + self.heavy_prob * heavy

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        sizes = self.light_median * np.exp(self.light_sigma * rng.standard_normal(n))
        heavy = rng.random(n) < self.heavy_prob
        sizes[heavy] = rng.uniform(self.heavy_low, self.heavy_high, int(heavy.sum()))
        return sizes


ServiceTime = Exponential | HeavyTailed


# --- the cluster and the balancer ----------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """N servers behind one balancer, and the traffic that reaches it."""

    n_servers: int = 10
    arrival_rate: float = 9.0  # requests per second, Poisson
    service: ServiceTime = field(default_factory=Exponential)
    workers: int = 1  # concurrent requests one server works on; the rest queue (FCFS)
    speeds: tuple[float, ...] | None = None  # per server; 0.1 = ten times slower. None: all 1
    error_rates: tuple[float, ...] | None = None  # per server probability of a 5xx. None: 0
    slow_from: float = 0.0  # seconds: ``speeds`` apply to requests arriving from then on
    weights: tuple[float, ...] | None = None  # configured capacity, for weighted policies

    def weight_list(self) -> list[float]:
        return list(self.weights) if self.weights is not None else [1.0] * self.n_servers

    def speed_list(self) -> list[float]:
        return list(self.speeds) if self.speeds is not None else [1.0] * self.n_servers

    def error_list(self) -> list[float]:
        return list(self.error_rates) if self.error_rates is not None else [0.0] * self.n_servers

    @property
    def utilization(self) -> float:
        """Offered load divided by total capacity (speeds included)."""
        capacity = self.workers * sum(self.speed_list()) / self.service.mean  # requests/s
        return self.arrival_rate / capacity

    def with_slow_server(self, server: int, speed: float) -> Cluster:
        """The same cluster with one server slowed down (it stays up, passes health checks)."""
        speeds = self.speed_list()
        speeds[server] = speed
        return replace(self, speeds=tuple(speeds))


@dataclass(frozen=True)
class OutlierDetection:
    """Passive outlier detection, after Envoy's model (defaults are Envoy's where it has one).

    - ``consecutive_errors``: eject a host after this many 5xx in a row (Envoy: consecutive_5xx 5).
    - Every ``interval`` seconds (Envoy: 10 s) the detector also compares each host's
      median latency over the interval with the median of all hosts, and ejects a host
      slower than ``latency_factor`` times that (Envoy has no latency ejection of its own:
      there slowness shows up as timeouts, i.e. errors; the toy adds it to make it visible).
      Hosts with fewer than ``min_requests`` completions in the interval are not judged.
    - An ejection lasts ``base_ejection_time`` times the number of times the host has been
      ejected (Envoy: 30 s), at most ``max_ejection_time`` (Envoy: 300 s); the host returns
      at the first interval tick after that.
    - At most ``max_ejection_percent`` of hosts are ejected at once, but at least one
      (Envoy: 10%).
    - ``panic_threshold``: if fewer than this fraction of hosts are usable, the balancer
      ignores ejections and uses every host (Envoy: healthy_panic_threshold 50%).
    """

    consecutive_errors: int = 5
    interval: float = 10.0  # seconds
    latency_factor: float | None = None  # None: no latency-based ejection
    min_requests: int = 20  # completions per host per interval before it is judged
    base_ejection_time: float = 30.0  # seconds
    max_ejection_time: float = 300.0  # seconds
    max_ejection_percent: float = 10.0
    panic_threshold: float = 0.5


class View:
    """What a policy may look at. The simulator updates it in place; policies read it.

    Attributes: ``n_servers``; ``candidates`` (servers not ejected; pick one of these);
    ``active`` (requests in flight per server, as the balancer counts them);
    ``latency_ewma`` (per server, seconds: exponentially weighted mean of observed
    latencies, 0.0 until a first response); ``completed`` (responses seen per server);
    ``weights`` (per server, for weighted policies); ``now`` (seconds); ``rng`` (a seeded
    ``random.Random``: use it, not the global one, so runs repeat); ``state`` (a dict the
    policy may keep its own memory in, e.g. a round-robin counter).
    """

    __slots__ = ("n_servers", "candidates", "active", "latency_ewma", "completed",
                 "weights", "now", "rng", "state", "ewma_alpha")

    def __init__(self, n_servers: int, weights: Sequence[float], rng: random.Random,
                 ewma_alpha: float) -> None:
        self.n_servers = n_servers
        self.candidates: list[int] = list(range(n_servers))
        self.active: list[int] = [0] * n_servers
        self.latency_ewma: list[float] = [0.0] * n_servers
        self.completed: list[int] = [0] * n_servers
        self.weights: list[float] = list(weights)
        self.now = 0.0
        self.rng = rng
        self.state: dict[str, Any] = {}
        self.ewma_alpha = ewma_alpha  # weight of the newest observation


Policy = Callable[[View], int]


@dataclass(frozen=True)
class Balancer:
    """A policy, optionally with outlier detection: what the exercise asks for."""

    policy: Policy
    outlier_detection: OutlierDetection | None = None
    ewma_alpha: float = 0.1  # how fast View.latency_ewma follows new observations


# --- built-in policies ---------------------------------------------------------------


def round_robin(view: View) -> int:
    """Each usable server in turn."""
    k = view.state.get("rr", 0)
    view.state["rr"] = k + 1
    cands = view.candidates
    return cands[k % len(cands)]


def random_choice(view: View) -> int:
    """A usable server uniformly at random."""
    return view.rng.choice(view.candidates)


def least_connections(view: View) -> int:
    """The usable server with the fewest requests in flight (ties: a random one of them)."""
    active = view.active
    cands = view.candidates
    fewest = min(active[i] for i in cands)
    tied = [i for i in cands if active[i] == fewest]
    return tied[0] if len(tied) == 1 else view.rng.choice(tied)


def power_of_two(view: View) -> int:
    """Sample two usable servers, take the one with fewer in flight (Envoy least_request)."""
    cands = view.candidates
    a = view.rng.choice(cands)
    b = view.rng.choice(cands)
    return a if view.active[a] <= view.active[b] else b


def power_of_d(d: int) -> Policy:
    """Sample ``d`` servers (with replacement, as in Mitzenmacher's model); fewest in flight."""

    def policy(view: View) -> int:
        cands, active, choice = view.candidates, view.active, view.rng.choice
        best = choice(cands)
        for _ in range(d - 1):
            other = choice(cands)
            if active[other] < active[best]:
                best = other
        return best

    policy.__name__ = f"power_of_{d}"
    return policy


def weighted_round_robin(view: View) -> int:
    """Smooth weighted round-robin (nginx's algorithm): server i gets weight_i / sum of turns."""
    current = view.state.setdefault("wrr", [0.0] * view.n_servers)
    weights = view.weights
    cands = view.candidates
    total = 0.0
    best = cands[0]
    for i in cands:
        current[i] += weights[i]
        total += weights[i]
        if current[i] > current[best]:
            best = i
    current[best] -= total
    return best


POLICIES: dict[str, Policy] = {
    "round-robin": round_robin,
    "random": random_choice,
    "least-connections": least_connections,
    "power of two": power_of_two,
    "weighted round-robin": weighted_round_robin,
}


# --- the simulator -------------------------------------------------------------------


@dataclass
class Result:
    """Per-request record of one simulation (requests in arrival order, warm-up removed)."""

    arrival: np.ndarray  # seconds
    latency: np.ndarray  # seconds, arrival to response; NaN for dropped requests
    server: np.ndarray  # index of the server that served it; -1 if dropped
    error: np.ndarray  # bool: the server answered 5xx
    n_servers: int
    ejections: list[tuple[int, float, float]]  # (server, from, until) in seconds
    duration: float  # seconds of simulated time covered by the kept requests

    @property
    def dropped(self) -> int:
        return int((self.server < 0).sum())

    def served(self) -> np.ndarray:
        return self.latency[self.server >= 0]

    def percentile(self, q: float, server: int | None = None) -> float:
        lat = self.served() if server is None else self.latency[self.server == server]
        return float(np.percentile(lat, q)) if lat.size else float("nan")

    def mean(self) -> float:
        return float(self.served().mean())

    def share(self) -> np.ndarray:
        """Fraction of all requests each server took."""
        counts = np.bincount(self.server[self.server >= 0], minlength=self.n_servers)
        return counts / max(1, self.server.size)

    def ejected_seconds(self, server: int) -> float:
        """Seconds (within the kept requests' time span) that ``server`` spent ejected."""
        if not self.arrival.size:
            return 0.0
        begin, end = float(self.arrival[0]), float(self.arrival[-1])
        return sum(max(0.0, min(u, end) - max(s, begin))
                   for srv, s, u in self.ejections if srv == server)

    def after(self, t: float) -> Result:
        """Only the requests that arrived at or after ``t`` seconds."""
        keep = self.arrival >= t
        arr = self.arrival[keep]
        return Result(arrival=arr, latency=self.latency[keep], server=self.server[keep],
                      error=self.error[keep], n_servers=self.n_servers,
                      ejections=self.ejections,
                      duration=float(arr[-1] - arr[0]) if arr.size > 1 else 0.0)


def _draw(cluster: Cluster, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times, request sizes and error draws, all from one seeded generator."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / cluster.arrival_rate, n))  # seconds
    sizes = cluster.service.sample(rng, n)  # seconds of work at speed 1
    fails = rng.random(n)  # compared with each server's error rate
    return arrivals, sizes, fails


def simulate(cluster: Cluster, balancer: Balancer | Policy, n_requests: int, *,
             seed: int = 0, warmup: int = 0) -> Result:
    """Simulate ``n_requests`` (+ ``warmup`` more, discarded) through the balancer."""
    if not isinstance(balancer, Balancer):
        balancer = Balancer(balancer)
    n = n_requests + warmup
    arrivals_np, sizes_np, fails_np = _draw(cluster, n, seed)
    arrivals, sizes, fails = arrivals_np.tolist(), sizes_np.tolist(), fails_np.tolist()
    speeds, error_rates = cluster.speed_list(), cluster.error_list()
    slow_from = cluster.slow_from
    n_srv = cluster.n_servers
    view = View(n_srv, weights=cluster.weight_list(), rng=random.Random(seed),
                ewma_alpha=balancer.ewma_alpha)
    policy = balancer.policy
    od = balancer.outlier_detection
    detector = _Detector(od, n_srv, view) if od is not None else None

    latency = [math.nan] * n
    server = [-1] * n
    error = [False] * n
    # Per server, the times its worker slots become free (a heap of `workers` floats).
    free: list[list[float]] = [[0.0] * cluster.workers for _ in range(n_srv)]
    pending: list[tuple[float, int, int]] = []  # heap of (done time, server, request)
    active, ewma, completed = view.active, view.latency_ewma, view.completed
    alpha = balancer.ewma_alpha
    heappush, heappop, heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace

    for k in range(n):
        t = arrivals[k]
        # Replay every response that came back before this arrival.
        while pending and pending[0][0] <= t:
            done, srv, rid = heappop(pending)
            active[srv] -= 1
            lat = latency[rid]
            completed[srv] += 1
            ewma[srv] = lat if completed[srv] == 1 else ewma[srv] + alpha * (lat - ewma[srv])
            if detector is not None:
                detector.observe(srv, lat, error[rid], done)
        view.now = t
        if detector is not None:
            detector.tick(t)
        srv = policy(view)
        if isinstance(srv, bool) or not isinstance(srv, (int, np.integer)):
            raise TypeError(f"the policy returned {srv!r}; it must return a server index (int)")
        srv = int(srv)
        if not 0 <= srv < n_srv or (detector is not None and srv not in view.candidates):
            continue  # dropped: no such server, or the balancer has ejected it
        start = max(t, free[srv][0])  # FCFS: wait for the earliest free worker slot
        done = start + (sizes[k] / speeds[srv] if t >= slow_from else sizes[k])
        heapreplace(free[srv], done)
        active[srv] += 1
        latency[k] = done - t
        server[k] = srv
        error[k] = fails[k] < error_rates[srv]
        heappush(pending, (done, srv, k))

    ejections = detector.log(arrivals[-1]) if detector is not None else []
    keep = slice(warmup, n)
    arr = arrivals_np[keep]
    return Result(arrival=arr, latency=np.array(latency[keep]),
                  server=np.array(server[keep], dtype=np.int64), error=np.array(error[keep]),
                  n_servers=n_srv, ejections=ejections,
                  duration=float(arr[-1] - arr[0]) if arr.size > 1 else 0.0)


class _Detector:
    """Envoy-style passive outlier detection, driven by the responses the balancer sees."""

    def __init__(self, od: OutlierDetection, n: int, view: View) -> None:
        self.od, self.n, self.view = od, n, view
        self.consecutive = [0] * n
        self.times_ejected = [0] * n
        self.ejected_until: dict[int, float] = {}  # server -> seconds
        self.window: list[list[float]] = [[] for _ in range(n)]  # latencies this interval
        self.next_tick = od.interval
        self.history: list[list[float]] = []  # [server, from, until]
        self.open_record: dict[int, list[float]] = {}  # server -> its current ejection
        self.max_ejected = max(1, int(n * od.max_ejection_percent / 100))

    def observe(self, srv: int, lat: float, failed: bool, now: float) -> None:
        self.window[srv].append(lat)
        if failed:
            self.consecutive[srv] += 1
            if self.consecutive[srv] >= self.od.consecutive_errors:
                self.consecutive[srv] = 0
                self._eject(srv, now)
        else:
            self.consecutive[srv] = 0

    def tick(self, now: float) -> None:
        while now >= self.next_tick:
            self._interval(self.next_tick)
            self.next_tick += self.od.interval

    def _interval(self, now: float) -> None:
        for srv, until in list(self.ejected_until.items()):
            if now >= until:  # back in the pool
                del self.ejected_until[srv]
                self.open_record.pop(srv)[2] = now
        self._refresh()
        if self.od.latency_factor is not None:
            medians = {s: float(np.median(w)) for s, w in enumerate(self.window)
                       if len(w) >= self.od.min_requests and s not in self.ejected_until}
            if len(medians) >= 2:
                fleet = float(np.median(list(medians.values())))
                worst_first = sorted(medians, key=medians.get, reverse=True)
                for srv in worst_first:
                    if medians[srv] > self.od.latency_factor * fleet:
                        self._eject(srv, now)
        self.window = [[] for _ in range(self.n)]

    def _eject(self, srv: int, now: float) -> None:
        if srv in self.ejected_until or len(self.ejected_until) >= self.max_ejected:
            return
        self.times_ejected[srv] += 1
        length = min(self.od.base_ejection_time * self.times_ejected[srv],
                     self.od.max_ejection_time)
        self.ejected_until[srv] = now + length
        record = [srv, now, math.inf]  # `until` is set when it returns
        self.history.append(record)
        self.open_record[srv] = record
        self._refresh()

    def _refresh(self) -> None:
        usable = [s for s in range(self.n) if s not in self.ejected_until]
        if len(usable) < self.od.panic_threshold * self.n or not usable:
            usable = list(range(self.n))  # panic: use every host
        self.view.candidates = usable

    def log(self, end: float) -> list[tuple[int, float, float]]:
        return [(s, a, min(u, end)) for s, a, u in self.history]


# --- the vectorized path: Lindley's recursion in numpy -------------------------------


def fcfs_single_worker(arrivals: np.ndarray, work: np.ndarray, free_at: float = 0.0) -> np.ndarray:
    """Completion times of one single-worker FCFS server, without a Python loop.

    Lindley: ``done_k = max(arrival_k, done_{k-1}) + work_k``. Unrolled, with
    ``C_k = work_1 + ... + work_k``, that is ``done_k = C_k + max(free_at,
    max_{j<=k}(arrival_j - C_{j-1}))``: a cumulative sum and a cumulative maximum.
    """
    cum = np.cumsum(work)
    return cum + np.maximum(free_at, np.maximum.accumulate(arrivals - (cum - work)))


STATIC_ASSIGNERS: dict[Policy, Callable[[np.random.Generator, int, int, int], np.ndarray]] = {
    # policy -> (rng, first request number, how many, n_servers) -> server of each request
    round_robin: lambda rng, first, m, n: (np.arange(first, first + m) % n),
    random_choice: lambda rng, first, m, n: rng.integers(0, n, m),
}


def long_run_mean_latency(cluster: Cluster, policy: Policy, n_requests: int, *,
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
    service: HeavyTailed = field(default_factory=HeavyTailed)
    n_requests: int = 40_000  # about a minute of noon traffic, after the slowdown
    warm_seconds: float = 10.0  # healthy noon traffic first, so the balancer has history

    def cluster(self, *, slow: bool = True, traffic: float = 1.0) -> Cluster:
        """The fleet at noon (``traffic`` scales the rate: 1/3 is 9am).

        The slow server slows down ``warm_seconds`` into the run.
        """
        base = Cluster(n_servers=self.n_servers, arrival_rate=self.noon_rate * traffic,
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
_UNSEEN = Scenario("unseen variant: 8 servers, server 6 at 1/6 speed", n_servers=8,
                   noon_rate=450.0, slow_server=6, slowdown=6.0)
CHECK_SEEDS = (11, 12, 13)
SLOW_FACTOR = 5.0  # a request is "slow" if it takes more than 5x the healthy median
MAX_SLOW_FRACTION = 0.01
MAX_P99_RATIO = 2.0
MAX_HEALTHY_EJECTED = 0.10  # fraction of the noon window a healthy server may spend ejected


@dataclass(frozen=True)
class NoonReport:
    """One policy on one scenario and seed: the numbers the checker judges."""

    scenario: str
    seed: int
    p99_slow_fleet: float  # seconds, all requests, slow server present
    p99_healthy_fleet: float  # seconds, same policy, every server healthy
    median_healthy_fleet: float  # seconds
    slow_fraction: float  # requests slower than SLOW_FACTOR x healthy median
    slow_server_share: float  # fraction of requests the slow server took
    slow_server_p99: float  # seconds, p99 of the slow server's users
    dropped: int
    worst_healthy_ejected: float  # fraction of the window, worst healthy server


def noon_report(balancer: Balancer | Policy, scenario: Scenario = NOON, seed: int = 11,
                n_requests: int | None = None) -> NoonReport:
    """Run ``balancer`` at noon with and without the slow server; return the numbers."""
    n = (n_requests or scenario.n_requests) + int(scenario.noon_rate * scenario.warm_seconds)
    # Judge only what happens once the server has slowed down.
    healthy = simulate(scenario.cluster(slow=False), balancer, n, seed=seed)
    healthy = healthy.after(scenario.warm_seconds)
    slow = simulate(scenario.cluster(slow=True), balancer, n, seed=seed)
    slow = slow.after(scenario.warm_seconds)
    median_h = healthy.percentile(50)
    served = slow.served()
    others = [s for s in range(scenario.n_servers) if s != scenario.slow_server]
    window = max(slow.duration, 1e-9)
    return NoonReport(
        scenario=scenario.name, seed=seed,
        p99_slow_fleet=slow.percentile(99), p99_healthy_fleet=healthy.percentile(99),
        median_healthy_fleet=median_h,
        # A dropped request never got an answer: it counts as slow too.
        slow_fraction=float(((served > SLOW_FACTOR * median_h).sum() + slow.dropped)
                            / max(1, slow.server.size)),
        slow_server_share=float(slow.share()[scenario.slow_server]),
        slow_server_p99=slow.percentile(99, scenario.slow_server),
        dropped=slow.dropped + healthy.dropped,
        worst_healthy_ejected=max(max(slow.ejected_seconds(s) for s in others),
                                  max(healthy.ejected_seconds(s)
                                      for s in range(scenario.n_servers))) / window)


def _as_balancer(answer: Any) -> Balancer:
    if isinstance(answer, Balancer):
        return answer
    return Balancer(answer)


def _checks(answer: Any) -> list[ex.Check]:
    policy = answer.policy if isinstance(answer, Balancer) else answer
    bad = ex.expect_callable(policy, "your policy")
    if bad:
        return [bad]
    balancer = _as_balancer(answer)
    reports = [noon_report(balancer, sc, seed) for sc in (NOON, _UNSEEN) for seed in CHECK_SEEDS]
    checks: list[ex.Check] = []
    for sc in (NOON, _UNSEEN):
        mine = [r for r in reports if r.scenario == sc.name]
        worst_ratio = max(mine, key=lambda r: r.p99_slow_fleet / r.p99_healthy_fleet)
        ratio = worst_ratio.p99_slow_fleet / worst_ratio.p99_healthy_fleet
        checks.append(ex.Check(
            f"{sc.name}: overall p99", ratio <= MAX_P99_RATIO,
            f"≤ {MAX_P99_RATIO:.0f}× the p99 your policy gets with every server healthy",
            f"{worst_ratio.p99_slow_fleet:.3f} s vs {worst_ratio.p99_healthy_fleet:.3f} s "
            f"healthy ({ratio:.1f}×, worst of {len(mine)} seeds); users of the slow server: "
            f"p99 {worst_ratio.slow_server_p99:.2f} s, "
            f"{100 * worst_ratio.slow_server_share:.1f}% of requests",
            hint="Look at how much traffic the slow server still gets, and whether your "
                 "policy ever learns that it is slow (View.latency_ewma)."))
        worst_slow = max(mine, key=lambda r: r.slow_fraction)
        checks.append(ex.Check(
            f"{sc.name}: requests slower than {SLOW_FACTOR:.0f}× the healthy median",
            worst_slow.slow_fraction <= MAX_SLOW_FRACTION,
            f"≤ {100 * MAX_SLOW_FRACTION:.0f}% of requests",
            f"{100 * worst_slow.slow_fraction:.2f}% slower than "
            f"{SLOW_FACTOR * worst_slow.median_healthy_fleet * 1000:.0f} ms "
            f"(slow server took {100 * worst_slow.slow_server_share:.1f}% of requests)",
            hint="Least-connections only sends the slow server a bit less; the balancer has "
                 "to notice the slowness: latency-based outlier detection, or weigh servers "
                 "by their observed latency."))
    dropped = sum(r.dropped for r in reports)
    checks.append(ex.Check(
        "no request dropped", dropped == 0, "0 dropped",
        f"{dropped} dropped over {len(reports)} runs",
        hint="Return a server from view.candidates: an ejected or unknown server drops the "
             "request."))
    worst_ej = max(reports, key=lambda r: r.worst_healthy_ejected)
    checks.append(ex.Check(
        "no healthy server ejected for long",
        worst_ej.worst_healthy_ejected <= MAX_HEALTHY_EJECTED,
        f"≤ {100 * MAX_HEALTHY_EJECTED:.0f}% of the noon window",
        f"{100 * worst_ej.worst_healthy_ejected:.1f}% ({worst_ej.scenario}, seed {worst_ej.seed})",
        hint="A heavy request makes a healthy server look slow for a moment: judge a server "
             "on its median over an interval, or raise the latency factor."))
    return checks


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's balancer (a policy function, or a Balancer) on the noon scenario."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# --- measure: policies side by side -----------------------------------------------------


def compare_policies(balancers: dict[str, Balancer | Policy], scenario: Scenario = NOON,
                     seed: int = 0) -> list[dict[str, Any]]:
    """One row per policy at noon with the slow server: p99s and each server's share."""
    rows = []
    for name, balancer in balancers.items():
        r = noon_report(balancer, scenario, seed)
        result = simulate(scenario.cluster(slow=True), balancer,
                          scenario.n_requests + int(scenario.noon_rate * scenario.warm_seconds),
                          seed=seed).after(scenario.warm_seconds)
        rows.append({"policy": name, "p99 all (s)": r.p99_slow_fleet,
                     "p99 slow server's users (s)": r.slow_server_p99,
                     "p99 healthy fleet (s)": r.p99_healthy_fleet,
                     "slower than 5x median (%)": 100 * r.slow_fraction,
                     "share per server (%)": [round(100 * float(x), 1) for x in result.share()]})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`compare_policies` rows."""
    lines = [f"{'policy':<34}{'p99 all':>9}{'p99 slow srv':>13}{'p99 healthy':>12}"
             f"{'>5x med':>9}   share per server (%)"]
    for r in rows:
        lines.append(f"{r['policy']:<34}{r['p99 all (s)']:>8.3f}s"
                     f"{r['p99 slow server' + chr(39) + 's users (s)']:>12.2f}s"
                     f"{r['p99 healthy fleet (s)']:>11.3f}s"
                     f"{r['slower than 5x median (%)']:>8.2f}%   {r['share per server (%)']}")
    return "\n".join(lines)


# --- explore: the widget callback -------------------------------------------------------


def explore_figure() -> Any:
    """An empty two-panel figure (latency per server, p50/p99 per server) for the explorer."""
    from plotly.subplots import make_subplots

    from labsupport import plots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=("latency distribution per server",
                                        "p50 and p99 per server"))
    fig.add_box(name="latency", row=1, col=1, boxpoints=False,
                marker_color=plots.PALETTE[0], showlegend=False)
    fig.add_bar(name="p50", row=1, col=2, marker_color=plots.PALETTE[0])
    fig.add_bar(name="p99", row=1, col=2, marker_color=plots.PALETTE[3])
    fig.update_layout(template="labsupport", height=380, barmode="group",
                      legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(title_text=plots.axis_title("latency", "s"), type="log", row=1, col=1)
    fig.update_yaxes(title_text=plots.axis_title("latency", "s"), type="log", row=1, col=2)
    fig.update_xaxes(title_text="server", row=1, col=1)
    fig.update_xaxes(title_text="server", row=1, col=2)
    return fig


def update_explore(fig: Any, traffic: float = 3.0, policy: str = "round-robin",
                   slowdown: float = 10.0, n_servers: int = 10, seed: int = 0,
                   n_requests: int = 4_000) -> str:
    """Simulate one setting and redraw ``fig`` (from :func:`explore_figure`) in place.

    ``traffic`` is relative to 9am (3 = noon); server 3 (or the last one, in a small fleet)
    runs ``slowdown`` times slower. Returns a one-line summary of what the figure shows.
    """
    slow = min(NOON.slow_server, n_servers - 1)
    per_server = NOON.noon_rate / NOON.n_servers / 3  # requests/s per server at 9am
    cluster = Cluster(n_servers=n_servers, arrival_rate=per_server * n_servers * traffic,
                      service=NOON.service, workers=NOON.workers)
    if slowdown > 1:
        cluster = cluster.with_slow_server(slow, 1.0 / slowdown)
    result = simulate(cluster, POLICIES[policy], n_requests, seed=seed, warmup=n_requests // 4)
    names = [f"s{i}" + (" (slow)" if i == slow and slowdown > 1 else "")
             for i in range(n_servers)]
    stats = []
    for i in range(n_servers):
        lat = result.latency[result.server == i]
        stats.append(np.percentile(lat, [1, 25, 50, 75, 99]) if lat.size else [np.nan] * 5)
    q = np.array(stats)
    with fig.batch_update():
        fig.data[0].update(x=names, lowerfence=q[:, 0], q1=q[:, 1], median=q[:, 2],
                           q3=q[:, 3], upperfence=q[:, 4])
        fig.data[1].update(x=names, y=q[:, 2])
        fig.data[2].update(x=names, y=q[:, 4])
    share = result.share()
    return (f"{policy}, traffic ×{traffic:g} (utilization {100 * cluster.utilization:.0f}%): "
            f"p99 all {result.percentile(99):.3f} s; slow server s{slow} took "
            f"{100 * share[slow]:.1f}% of requests, its p99 "
            f"{result.percentile(99, slow):.2f} s")


# --- performance: `make bench` -------------------------------------------------------------


def simulate_simpy(cluster: Cluster, policy: Policy, n_requests: int, *,
                   seed: int = 0) -> np.ndarray:
    """The same model written with SimPy (one process per request); returns latencies.

    It replays the same arrivals and sizes and asks the same policy function, keeping the
    in-flight counts in the View from SimPy's own events; so with a policy that reads
    only ``active`` both simulators must produce the same latency for every request.
    """
    import simpy

    arrivals, sizes, _ = _draw(cluster, n_requests, seed)
    arrivals_l, sizes_l = arrivals.tolist(), sizes.tolist()
    speeds = cluster.speed_list()
    env = simpy.Environment()
    servers = [simpy.Resource(env, capacity=cluster.workers) for _ in range(cluster.n_servers)]
    view = View(cluster.n_servers, cluster.weight_list(), random.Random(seed), 0.1)
    latency = np.full(n_requests, np.nan)

    def request(k: int, srv: int):  # a SimPy process: queue, get a worker, work, leave
        with servers[srv].request() as slot:
            yield slot
            yield env.timeout(sizes_l[k] / speeds[srv])
        view.active[srv] -= 1
        view.completed[srv] += 1
        latency[k] = env.now - arrivals_l[k]

    def source():
        for k in range(n_requests):
            yield env.timeout(arrivals_l[k] - env.now)
            view.now = env.now
            srv = policy(view)
            view.active[srv] += 1
            env.process(request(k, srv))

    env.process(source())
    env.run()
    return latency


def benchmark(n_requests: int = 100_000, seed: int = 1) -> dict[str, Any]:
    """Seconds to simulate ``n_requests`` per policy, and the SimPy cross-check.

    The model: 10 single-worker servers, exponential sizes, 90% utilization.
    """
    cluster = Cluster(n_servers=10, arrival_rate=9.0, service=Exponential(1.0))
    seconds: dict[str, float] = {}
    for name, policy in POLICIES.items():
        t0 = time.perf_counter()
        simulate(cluster, policy, n_requests, seed=seed)
        seconds[name] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    ours = simulate(cluster, least_connections, n_requests, seed=seed).latency
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = simulate_simpy(cluster, least_connections, n_requests, seed=seed)
    simpy_s = time.perf_counter() - t0
    return {
        "requests": n_requests,
        "seconds per policy": seconds,
        "all policies within 1 s": max(seconds.values()) <= 1.0,
        "simpy check (least-connections)": {
            "mean latency, this simulator (s)": round(float(ours.mean()), 4),
            "mean latency, SimPy (s)": round(float(np.nanmean(theirs)), 4),
            "largest per-request difference (s)": float(np.nanmax(np.abs(ours - theirs))),
            "agree": bool(np.allclose(ours, theirs, rtol=0, atol=1e-6)),
            "this simulator (s)": round(ours_s, 3),
            "SimPy (s)": round(simpy_s, 3),
            "speed ratio (SimPy / this)": round(simpy_s / ours_s, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m labsupport.load_balancing``: print :func:`benchmark` as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport.load_balancing",
        description="Benchmark the load-balancer simulator: seconds to simulate N requests "
                    "per policy (10 single-worker servers, 90% utilization), and the "
                    "cross-check against SimPy. Prints JSON.")
    parser.add_argument("--requests", type=int, default=100_000, metavar="N",
                        help="requests per policy (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    print(json.dumps(benchmark(args.requests, seed=args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
