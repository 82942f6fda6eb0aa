"""Backs ``02_load_balancing.ipynb``: a load-balancer simulator and its policies.

Poisson arrivals reach a balancer in front of N servers, each with ``workers`` slots and a
FCFS queue; a server with speed 0.1 takes ten times as long while it stays up. A *policy*
is a plain function of a :class:`View` (what the balancer knows: requests in flight,
observed latencies, which servers are ejected) that returns a server index.

A request never moves once dispatched, so its completion time is known at once (when the
earliest worker frees, plus size / speed): :func:`simulate` keeps a heap of completion
times and replays it before each arrival, so 100,000 requests take well under a second.
The queueing theory it is checked against and the noon scenario are in ``checks/``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# --- service-time distributions ------------------------------------------------------


@dataclass(frozen=True)
class Exponential:
    """Exponential request sizes: what queueing theory's M/M/c assumes."""

    mean: float = 1.0  # seconds of work on a server of speed 1

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean, n)


@dataclass(frozen=True)
class HeavyTailed:
    """Mostly short requests, log-normal around ``light_median``; with probability
    ``heavy_prob`` a heavy one, uniform between ``heavy_low`` and ``heavy_high``."""

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
        return list(self.weights or [1.0] * self.n_servers)

    def speed_list(self) -> list[float]:
        return list(self.speeds or [1.0] * self.n_servers)

    def error_list(self) -> list[float]:
        return list(self.error_rates or [0.0] * self.n_servers)

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
    """Passive outlier detection, after Envoy's model (defaults and cap as in Envoy 1.31).

    Every ``interval`` the detector also runs :func:`latency_outliers` over the interval
    (Envoy has no latency ejection: there slowness shows up as timeouts, i.e. errors). An
    ejection lasts ``base_ejection_time`` times the number of times the host has been
    ejected, at most ``max_ejection_time``; the host returns at the first tick after that.
    At most ``max_ejection_percent`` of the hosts are ejected at once, rounded down: with
    the default 10%, a fleet of 5 to 9 hosts ejects nobody, unless ``always_eject_one_host``.
    """

    consecutive_errors: int = 5  # eject a host after this many 5xx in a row (Envoy: 5)
    interval: float = 10.0  # seconds (Envoy: 10 s)
    latency_factor: float | None = None  # None: no latency-based ejection
    min_requests: int = 20  # completions per host per interval before it is judged
    base_ejection_time: float = 30.0  # seconds (Envoy: 30 s)
    max_ejection_time: float = 300.0  # seconds (Envoy: 300 s)
    max_ejection_percent: float = 10.0  # hosts ejected at once, rounded down (Envoy: 10%)
    always_eject_one_host: bool = False  # eject one even when the percentage allows none
    panic_threshold: float = 0.5  # fewer usable hosts: use all (Envoy's healthy_panic_threshold)


class View:
    """What a policy may look at. The simulator updates it in place; policies read it."""

    __slots__ = ("n_servers", "candidates", "active", "latency_ewma", "latency_peak",
                 "completed", "weights", "now", "rng", "state")

    def __init__(self, n_servers: int, weights: Sequence[float], rng: random.Random) -> None:
        self.n_servers = n_servers
        self.candidates: list[int] = list(range(n_servers))  # not ejected: pick one of these
        self.active: list[int] = [0] * n_servers  # requests in flight, as the balancer counts
        self.latency_ewma: list[float] = [0.0] * n_servers  # seconds; 0.0 until a first response
        self.latency_peak: list[float] = [0.0] * n_servers  # the same, by peak EWMA
        self.completed: list[int] = [0] * n_servers  # responses seen per server
        self.weights: list[float] = list(weights)  # per server, for weighted policies
        self.now = 0.0  # seconds
        self.rng = rng  # a seeded random.Random: use it, not the global one, so runs repeat
        self.state: dict[str, Any] = {}  # the policy's own memory, e.g. a round-robin counter


Policy = Callable[[View], int]


@dataclass(frozen=True)
class Balancer:
    """A policy, optionally with outlier detection: what the exercise asks for."""

    policy: Policy
    outlier_detection: OutlierDetection | None = None
    ewma_alpha: float = 0.1  # how fast View.latency_ewma follows new observations
    peak_tau: float = 10.0  # seconds: how fast View.latency_peak decays (Finagle's 10 s)


# --- what the balancer learns from responses -------------------------------------------


def ewma_update(previous: float | None, observation: float, alpha: float) -> float:
    """Exponentially weighted moving average: the first observation, then a step of
    ``alpha`` (0 to 1) of the way towards each new one."""
    return observation if previous is None else previous + alpha * (observation - previous)


def peak_ewma_update(previous: float | None, observation: float, elapsed: float,
                     tau: float) -> float:
    """Peak EWMA (Finagle, Linkerd): jump *up* to a slower observation at once, decay
    towards a faster one with weight ``exp(-elapsed / tau)`` on the old value (seconds)."""
    if previous is None or observation > previous:
        return observation
    w = math.exp(-elapsed / tau)
    return previous * w + observation * (1 - w)


def latency_outliers(windows: Sequence[Sequence[float]], factor: float,
                     min_requests: int) -> list[int]:
    """Servers whose median latency over the interval (``windows[s]``) is more than
    ``factor`` times the fleet's: the median of the judged servers' medians. A server
    with fewer than ``min_requests`` latencies is not judged. Slowest first."""
    medians = {s: float(np.median(w)) for s, w in enumerate(windows) if len(w) >= min_requests}
    if len(medians) < 2:
        return []
    fleet = float(np.median(list(medians.values())))
    return sorted((s for s, m in medians.items() if m > factor * fleet),
                  key=lambda s: -medians[s])


# --- built-in policies ---------------------------------------------------------------


def round_robin(view: View) -> int:
    """Each usable server in turn."""
    k = view.state.get("rr", 0)
    view.state["rr"] = k + 1
    return view.candidates[k % len(view.candidates)]


def random_choice(view: View) -> int:
    """A usable server uniformly at random."""
    return view.rng.choice(view.candidates)


def least_connections(view: View) -> int:
    """The usable server with the fewest requests in flight (ties: a random one of them)."""
    active, cands = view.active, view.candidates
    fewest = min(active[i] for i in cands)
    tied = [i for i in cands if active[i] == fewest]
    return tied[0] if len(tied) == 1 else view.rng.choice(tied)


def power_of_two(view: View) -> int:
    """Sample two usable servers, take the one with fewer in flight (Envoy least_request)."""
    a, b = view.rng.choice(view.candidates), view.rng.choice(view.candidates)
    return a if view.active[a] <= view.active[b] else b


def weighted_round_robin(view: View) -> int:
    """Smooth weighted round-robin (nginx's algorithm): server i gets weight_i / sum of turns."""
    current, weights = view.state.setdefault("wrr", [0.0] * view.n_servers), view.weights
    total, best = 0.0, view.candidates[0]
    for i in view.candidates:
        current[i] += weights[i]
        total += weights[i]
        if current[i] > current[best]:
            best = i
    current[best] -= total
    return best


POLICIES: dict[str, Policy] = {"round-robin": round_robin, "random": random_choice,
                               "least-connections": least_connections, "power of two": power_of_two,
                               "weighted round-robin": weighted_round_robin}


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

    def share(self) -> np.ndarray:  # fraction of all requests each server took
        counts = np.bincount(self.server[self.server >= 0], minlength=self.n_servers)
        return counts / max(1, self.server.size)


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
    speeds, error_rates, slow_from = cluster.speed_list(), cluster.error_list(), cluster.slow_from
    n_srv, policy, od = cluster.n_servers, balancer.policy, balancer.outlier_detection
    view = View(n_srv, weights=cluster.weight_list(), rng=random.Random(seed))
    detector = _Detector(od, n_srv, view) if od is not None else None

    latency, server, error = [math.nan] * n, [-1] * n, [False] * n
    # Per server, the times its worker slots become free (a heap of `workers` floats).
    free: list[list[float]] = [[0.0] * cluster.workers for _ in range(n_srv)]
    pending: list[tuple[float, int, int]] = []  # heap of (done time, server, request)
    active, ewma, peak, completed = view.active, view.latency_ewma, view.latency_peak, view.completed
    alpha, tau, last_seen = balancer.ewma_alpha, balancer.peak_tau, [0.0] * n_srv
    heappush, heappop, heapreplace = heapq.heappush, heapq.heappop, heapq.heapreplace

    for k in range(n):
        t = arrivals[k]
        while pending and pending[0][0] <= t:  # replay the responses back before this arrival
            done, srv, rid = heappop(pending)
            active[srv] -= 1
            lat = latency[rid]
            first = completed[srv] == 0
            completed[srv] += 1
            ewma[srv] = ewma_update(None if first else ewma[srv], lat, alpha)
            peak[srv] = peak_ewma_update(None if first else peak[srv], lat, done - last_seen[srv], tau)
            last_seen[srv] = done
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
        self.max_ejected = max(int(n * od.max_ejection_percent / 100),  # rounded down (1.28+)
                               int(od.always_eject_one_host))

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
            judged = [[] if s in self.ejected_until else w for s, w in enumerate(self.window)]
            for srv in latency_outliers(judged, self.od.latency_factor, self.od.min_requests):
                self._eject(srv, now)
        self.window = [[] for _ in range(self.n)]

    def _eject(self, srv: int, now: float) -> None:
        if srv in self.ejected_until or len(self.ejected_until) >= self.max_ejected:
            return
        self.times_ejected[srv] += 1
        self.ejected_until[srv] = now + min(self.od.base_ejection_time * self.times_ejected[srv],
                                            self.od.max_ejection_time)
        self.open_record[srv] = record = [srv, now, math.inf]  # `until` is set when it returns
        self.history.append(record)
        self._refresh()

    def _refresh(self) -> None:
        usable = [s for s in range(self.n) if s not in self.ejected_until]
        if len(usable) < self.od.panic_threshold * self.n or not usable:
            usable = list(range(self.n))  # panic: use every host
        self.view.candidates = usable

    def log(self, end: float) -> list[tuple[int, float, float]]:
        return [(s, a, min(u, end)) for s, a, u in self.history]
