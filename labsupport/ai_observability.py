"""AI observability: TTFT, token throughput, P99 and queue depth from a streaming LLM server.

Backs ``notebooks/06_ai_observability.ipynb``. The parts, in the order the notebook uses them:

* a simulated LLM inference engine with continuous batching (batch slots, a waiting
  queue, prefill that grows with the prompt, decode that grows with the batch);
* the same engine served for real over HTTP (FastAPI streaming, server-sent events) on
  127.0.0.1, instrumented with ``prometheus_client`` under the OpenTelemetry GenAI metric
  names and bucket boundaries, with a ``/metrics`` endpoint;
* a load generator (httpx streaming) that measures TTFT, TPOT, ITL and E2E latency per
  request with vLLM's definitions, and a scraper that reads ``/metrics``;
* percentiles done right: Prometheus's ``histogram_quantile`` interpolation, exact
  percentiles from raw samples, why averaging p99s is wrong, Little's law;
* a dashboard, the widget callback, and the scenario exercise ("feels slow, CPU 30%").

Time is simulated. The engine keeps a virtual clock in simulated seconds and paces
itself against the wall clock at ``speed`` simulated seconds per wall second, so a
minute of traffic streams over real HTTP in a few seconds. Every token carries its
simulated timestamp, and the load generator declares each request's scheduled arrival
time; the server admits it at that simulated time. HTTP jitter therefore never changes
the results: an HTTP run equals :func:`simulate` on the same workload.

From a shell: ``python -m labsupport.ai_observability --port 8000`` serves the engine
in real time (speed 1); try ``curl -N -X POST localhost:8000/v1/completions
-H 'content-type: application/json' -d '{"prompt": "hello there", "max_tokens": 5}'``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from labsupport import exercises as ex
from labsupport import servers

EXERCISE_ID = "06_ai_observability"

# --- the OpenTelemetry GenAI semantic conventions (status: Development) ---------------
# https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/ gives each server
# histogram's name, unit (s) and the ExplicitBucketBoundaries it SHOULD use:
TTFT_BUCKETS: tuple[float, ...] = (          # gen_ai.server.time_to_first_token
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS: tuple[float, ...] = (          # gen_ai.server.time_per_output_token
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
REQUEST_DURATION_BUCKETS: tuple[float, ...] = (  # gen_ai.server.request.duration
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
# Prompt sizes: the first boundaries the conventions give gen_ai.client.token.usage.
PROMPT_TOKEN_BUCKETS: tuple[float, ...] = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)

# Prometheus names. An OpenTelemetry-to-Prometheus exporter replaces the dots with
# underscores and appends the unit ("s" -> "_seconds"), giving exactly these names.
TTFT_METRIC = "gen_ai_server_time_to_first_token_seconds"
TPOT_METRIC = "gen_ai_server_time_per_output_token_seconds"
DURATION_METRIC = "gen_ai_server_request_duration_seconds"
# The conventions define no queue or token-count metrics for servers; these follow
# vLLM's names (vllm:num_requests_waiting, vllm:num_requests_running,
# vllm:generation_tokens_total, vllm:request_prompt_tokens).
WAITING_METRIC = "llm_requests_waiting"
RUNNING_METRIC = "llm_requests_running"
TOKENS_METRIC = "llm_generation_tokens_total"
PROMPT_METRIC = "llm_request_prompt_tokens"
CLOCK_METRIC = "llm_engine_time_seconds"  # the engine's simulated clock
HISTOGRAMS = {TTFT_METRIC: TTFT_BUCKETS, TPOT_METRIC: TPOT_BUCKETS,
              DURATION_METRIC: REQUEST_DURATION_BUCKETS, PROMPT_METRIC: PROMPT_TOKEN_BUCKETS}
OTEL_LABELS = {"gen_ai_operation_name": "text_completion", "gen_ai_provider_name": "labsupport"}

VOCAB = ("the", "policy", "covers", "leave", "for", "all", "staff", "and", "requires",
         "notice", "of", "two", "weeks", "in", "writing", "before", "it", "starts", ".")


# --- workload -----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request of a workload; ``arrival_s`` in simulated seconds from the run start."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def make_workload(rate_per_s: float, duration_s: float, seed: int, *,
                  prompt_mean: float = 400.0, output_mean: float = 40.0) -> list[Request]:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``; log-normal prompt and
    output lengths (real chat traffic is right-skewed) with the given means."""
    rng = np.random.default_rng(seed)
    n_max = int(rate_per_s * duration_s * 2 + 20)
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, n_max))
    arrivals = arrivals[arrivals < duration_s]
    sigma = 0.5  # spread of the log-normal; mean = exp(mu + sigma^2 / 2)
    prompts = rng.lognormal(math.log(prompt_mean) - sigma**2 / 2, sigma, len(arrivals))
    outputs = rng.lognormal(math.log(output_mean) - sigma**2 / 2, sigma, len(arrivals))
    return [Request(i, float(a), int(np.clip(p, 8, 32768)), int(np.clip(o, 2, 1024)))
            for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs, strict=True))]


# --- the engine: continuous batching --------------------------------------------------


@dataclass(frozen=True)
class EngineConfig:
    """Cost model of the simulated accelerator, in simulated seconds."""

    slots: int = 8                        # batch slots (vLLM: max_num_seqs)
    step_overhead_s: float = 0.008        # fixed cost of one engine iteration
    decode_s_per_seq: float = 0.002       # decode cost per sequence in the batch
    prefill_s_per_token: float = 0.0002   # prefill cost per prompt token (5,000 tokens/s)
    host_cpu_s_per_step: float = 0.005    # host CPU per iteration (scheduler, Python)
    host_cpu_s_per_seq: float = 0.0005    # host CPU per sequence (sampling, detokenizing)


@dataclass
class _Seq:
    req_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    admitted_s: float = math.nan
    emitted: int = 0
    first_token_s: float = math.nan


@dataclass(frozen=True)
class TokenEvent:
    """One token leaving the engine at simulated time ``t_s``."""

    req_id: int
    index: int          # 0 for the first token
    t_s: float
    done: bool
    seq: _Seq


class BatchEngine:
    """Continuous batching: at the start of each iteration free slots take requests from
    the waiting queue (FIFO); the iteration prefills the newcomers and decodes one token
    for every sequence in the batch; a sequence leaves as soon as it has all its tokens.
    The caller owns the clock: :meth:`begin_step` returns how long the iteration takes."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self._pending: list[tuple[float, int, _Seq]] = []  # heap: not yet arrived
        self.waiting: deque[_Seq] = deque()
        self.running: list[_Seq] = []
        self._new: list[_Seq] = []
        self.host_cpu_s = 0.0  # modelled host CPU seconds so far
        self.tokens_total = 0

    def add(self, req_id: int, arrival_s: float, prompt_tokens: int, output_tokens: int) -> _Seq:
        seq = _Seq(req_id, arrival_s, prompt_tokens, output_tokens)
        heapq.heappush(self._pending, (arrival_s, req_id, seq))
        return seq

    def next_arrival(self) -> float | None:
        return self._pending[0][0] if self._pending else None

    def admit_arrivals(self, now: float) -> None:
        """Requests whose arrival time has come join the waiting queue."""
        while self._pending and self._pending[0][0] <= now:
            self.waiting.append(heapq.heappop(self._pending)[2])

    def begin_step(self, now: float) -> float | None:
        """Fill free slots, return the iteration's duration (None when idle)."""
        cfg = self.config
        self._new = []
        while self.waiting and len(self.running) < cfg.slots:
            seq = self.waiting.popleft()
            seq.admitted_s = now
            self.running.append(seq)
            self._new.append(seq)
        if not self.running:
            return None
        prefill_tokens = sum(s.prompt_tokens for s in self._new)
        batch = len(self.running)
        self.host_cpu_s += cfg.host_cpu_s_per_step + cfg.host_cpu_s_per_seq * batch
        return (cfg.step_overhead_s + cfg.prefill_s_per_token * prefill_tokens
                + cfg.decode_s_per_seq * batch)

    def end_step(self, t_end: float) -> list[TokenEvent]:
        """Every sequence in the batch emits one token at ``t_end``; finished ones leave."""
        events, still = [], []
        for seq in self.running:
            if seq.emitted == 0:
                seq.first_token_s = t_end
            seq.emitted += 1
            done = seq.emitted >= seq.output_tokens
            events.append(TokenEvent(seq.req_id, seq.emitted - 1, t_end, done, seq))
            if not done:
                still.append(seq)
        self.running = still
        self.tokens_total += len(events)
        return events


# --- what the client sees: records and the metric definitions -----------------------


@dataclass(frozen=True)
class RequestRecord:
    """What the load generator saw of one request (times in simulated seconds)."""

    id: int
    start_s: float                 # when the client sent it
    prompt_tokens: int
    token_times_s: tuple[float, ...]  # when each token reached the client

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)


def ttft(rec: RequestRecord) -> float:
    """Time to first token: first token minus start (vLLM ``ttft``)."""
    return rec.token_times_s[0] - rec.start_s


def e2e_latency(rec: RequestRecord) -> float:
    """End-to-end latency: last token minus start (vLLM ``e2el``)."""
    return rec.token_times_s[-1] - rec.start_s


def tpot(rec: RequestRecord) -> float:
    """Time per output token after the first: (E2E - TTFT) / (output tokens - 1).
    NaN for a one-token answer (vLLM leaves those out of TPOT)."""
    n = rec.output_tokens
    return (e2e_latency(rec) - ttft(rec)) / (n - 1) if n > 1 else math.nan


def inter_token_latencies(rec: RequestRecord) -> list[float]:
    """The gaps between consecutive tokens of one request (vLLM ``itl``)."""
    t = rec.token_times_s
    return [b - a for a, b in zip(t, t[1:], strict=False)]


def percentile(values: Sequence[float], q: float) -> float:
    """The exact ``q``-th percentile (0-100) of raw samples: ``numpy.percentile``'s
    default linear interpolation between order statistics. NaNs are dropped."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(np.percentile(arr, q)) if arr.size else math.nan


def token_throughput(records: Sequence[RequestRecord]) -> float:
    """Output tokens per second over the run: all tokens / (last token - first start),
    as vLLM's ``output_throughput`` divides by the benchmark's duration."""
    tokens = sum(r.output_tokens for r in records)
    span = max(r.token_times_s[-1] for r in records) - min(r.start_s for r in records)
    return tokens / span


def summarize(records: Sequence[RequestRecord]) -> dict[str, float]:
    """vLLM-style benchmark summary of a run (seconds, tokens per second)."""
    ttfts = [ttft(r) for r in records]
    e2es = [e2e_latency(r) for r in records]
    tpots = [tpot(r) for r in records]
    itls = [x for r in records for x in inter_token_latencies(r)]
    return {
        "requests": float(len(records)),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "ttft_mean_s": float(np.mean(ttfts)),
        "tpot_p50_s": percentile(tpots, 50), "tpot_p99_s": percentile(tpots, 99),
        "itl_p50_s": percentile(itls, 50), "itl_p99_s": percentile(itls, 99),
        "e2e_p50_s": percentile(e2es, 50), "e2e_p99_s": percentile(e2es, 99),
        "e2e_mean_s": float(np.mean(e2es)),
        "tokens_per_s": token_throughput(records),
    }


def goodput(records: Sequence[RequestRecord], *, ttft_slo_s: float, tpot_slo_s: float) -> float:
    """Requests per second that met every SLO (vLLM ``--goodput ttft:… tpot:…``)."""
    good = sum(1 for r in records if ttft(r) <= ttft_slo_s
               and (r.output_tokens < 2 or tpot(r) <= tpot_slo_s))
    span = max(r.token_times_s[-1] for r in records) - min(r.start_s for r in records)
    return good / span


# --- offline simulation (the widget, the checker, the tests) ------------------------


@dataclass
class SimResult:
    """An offline run: client records plus the server's view, for synthetic scrapes."""

    records: list[RequestRecord]
    config: EngineConfig
    server_arrival_s: np.ndarray
    admitted_s: np.ndarray
    server_token_times: list[np.ndarray]
    prompt_tokens: np.ndarray
    host_cpu: list[tuple[float, float]]  # (t, cumulative host CPU seconds) per iteration
    peak_waiting: int
    network_delay_s: float = 0.0


def simulate(workload: Sequence[Request], config: EngineConfig, *,
             network_delay_s: float = 0.0) -> SimResult:
    """Run the engine on a workload in simulated time, with no wall clock and no HTTP.
    ``network_delay_s`` delays each request on its way in and each token on its way out
    (the server's own histograms do not see it; the client does)."""
    engine = BatchEngine(config)
    seqs = [engine.add(r.id, r.arrival_s + network_delay_s, r.prompt_tokens, r.output_tokens)
            for r in workload]
    times: dict[int, list[float]] = {r.id: [] for r in workload}
    host_cpu: list[tuple[float, float]] = [(0.0, 0.0)]
    now, peak = 0.0, 0
    while True:
        engine.admit_arrivals(now)
        duration = engine.begin_step(now)
        peak = max(peak, len(engine.waiting))
        if duration is None:
            nxt = engine.next_arrival()
            if nxt is None:
                break
            now = nxt
            continue
        now = now + duration
        for ev in engine.end_step(now):
            times[ev.req_id].append(ev.t_s)
        host_cpu.append((now, engine.host_cpu_s))
    records = [RequestRecord(r.id, r.arrival_s, r.prompt_tokens,
                             tuple(t + network_delay_s for t in times[r.id])) for r in workload]
    return SimResult(records, config,
                     np.array([s.arrival_s for s in seqs]), np.array([s.admitted_s for s in seqs]),
                     [np.array(times[r.id]) for r in workload],
                     np.array([r.prompt_tokens for r in workload]), host_cpu, peak,
                     network_delay_s)


def capacity_estimate(config: EngineConfig, prompt_mean: float = 400.0,
                      output_mean: float = 40.0) -> float:
    """Requests per second a full batch sustains: each request costs its prefill plus
    its share (1/slots) of ``output_mean`` full decode iterations."""
    per_request = (config.prefill_s_per_token * prompt_mean
                   + output_mean * (config.step_overhead_s
                                    + config.decode_s_per_seq * config.slots) / config.slots)
    return 1.0 / per_request


# --- percentiles from histograms ----------------------------------------------------


def histogram_quantile(q: float, upper_bounds: Sequence[float],
                       cumulative_counts: Sequence[float]) -> float:
    """Prometheus's ``histogram_quantile`` for a classic histogram (promql/quantile.go).

    ``upper_bounds`` are the ``le`` labels in increasing order, the last one +Inf;
    ``cumulative_counts`` the bucket counts (each includes the buckets below it).
    Linear interpolation inside the bucket where rank q * count falls; the lowest
    bucket starts at 0 when its bound is positive; a quantile in the +Inf bucket
    returns the highest finite bound.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = [float(b) for b in upper_bounds]
    counts = [float(c) for c in cumulative_counts]
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return math.nan
    for i in range(1, len(counts)):  # Prometheus forces monotonic counts
        counts[i] = max(counts[i], counts[i - 1])
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if b == len(bounds) - 1:
        return bounds[-2]   # the +Inf bucket: all we know is "above the highest bound"
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * (rank / count)


def bucketize(values: Sequence[float], upper_bounds: Sequence[float]) -> list[int]:
    """Cumulative counts, as a Prometheus histogram would expose them (``le`` inclusive).
    ``upper_bounds`` gets +Inf appended if it lacks one."""
    bounds = list(upper_bounds)
    if not math.isinf(bounds[-1]):
        bounds.append(math.inf)
    arr = np.asarray(values, dtype=float)
    return [int(np.sum(arr <= b)) for b in bounds]


def prometheus_docs_example() -> dict[str, float]:
    """The example of prometheus.io/docs/practices/histograms: buckets 0.1, 0.2, 0.3 and
    0.45 s, every request at 220 ms (then 320 ms). The p95 reported is 295 ms (442.5 ms)."""
    bounds = [0.1, 0.2, 0.3, 0.45, math.inf]
    out = {}
    for label, value in (("spike_220ms", 0.220), ("spike_320ms", 0.320)):
        samples = np.full(1000, value)
        out[f"{label}_true_p95_s"] = percentile(samples, 95)
        out[f"{label}_histogram_p95_s"] = histogram_quantile(0.95, bounds,
                                                             bucketize(samples, bounds))
    return out


def averaging_p99_example() -> dict[str, float]:
    """Server A: 900 requests at 10 ms; server B: 100 at 1,000 ms. The mean of the two
    p99s is 505 ms; the p99 of all 1,000 requests is 1,000 ms."""
    a, b = np.full(900, 0.010), np.full(100, 1.000)
    p99_a, p99_b = percentile(a, 99), percentile(b, 99)
    return {"p99_a_s": p99_a, "p99_b_s": p99_b, "mean_of_p99s_s": (p99_a + p99_b) / 2,
            "pooled_p99_s": percentile(np.concatenate([a, b]), 99)}


def littles_law(records: Sequence[RequestRecord],
                in_flight_samples: Sequence[tuple[float, float]] | None = None) -> dict[str, float]:
    """L = lambda * W on a run. ``L`` is the time-average number of requests in flight:
    exact from the records (each request is in flight from start to last token), or,
    given ``(t, in_flight)`` samples such as scraped gauges, their time average."""
    t0 = min(r.start_s for r in records)
    t1 = max(r.token_times_s[-1] for r in records)
    span = t1 - t0
    w = float(np.mean([e2e_latency(r) for r in records]))
    lam = len(records) / span
    if in_flight_samples is None:
        l_measured = sum(e2e_latency(r) for r in records) / span
    else:
        ts = np.array([t for t, _ in in_flight_samples])
        ns = np.array([n for _, n in in_flight_samples])
        l_measured = float(np.sum(ns[:-1] * np.diff(ts)) / (ts[-1] - ts[0]))
    return {"throughput_per_s": lam, "mean_e2e_s": w, "lambda_times_w": lam * w,
            "mean_in_flight": l_measured}


# --- instrumentation ------------------------------------------------------------------


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (re-run safe)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        names = list(OTEL_LABELS)
        docs = {TTFT_METRIC: "Time to generate first token (OTel gen_ai.server.time_to_first_token).",
                TPOT_METRIC: "Time per output token after the first (OTel gen_ai.server.time_per_output_token).",
                DURATION_METRIC: "Request duration to the last token (OTel gen_ai.server.request.duration).",
                PROMPT_METRIC: "Prompt tokens per request (vLLM request_prompt_tokens)."}
        self.hist = {name: Histogram(name, docs[name], names, buckets=buckets,
                                     registry=self.registry).labels(**OTEL_LABELS)
                     for name, buckets in HISTOGRAMS.items()}
        self.waiting = Gauge(WAITING_METRIC, "Requests waiting for a batch slot.",
                             registry=self.registry)
        self.running = Gauge(RUNNING_METRIC, "Requests in the running batch.",
                             registry=self.registry)
        self.tokens = Counter(TOKENS_METRIC.removesuffix("_total"), "Generated tokens.",
                              registry=self.registry)
        self.clock = Gauge(CLOCK_METRIC, "The engine's simulated clock.", registry=self.registry)

    def observe(self, ev: TokenEvent) -> None:
        """Account one token event (server-side times, from arrival at the server)."""
        self.tokens.inc()
        seq = ev.seq
        if ev.index == 0:
            self.hist[TTFT_METRIC].observe(ev.t_s - seq.arrival_s)
            self.hist[PROMPT_METRIC].observe(seq.prompt_tokens)
        if ev.done:
            self.hist[DURATION_METRIC].observe(ev.t_s - seq.arrival_s)
            if seq.emitted > 1:
                self.hist[TPOT_METRIC].observe((ev.t_s - seq.first_token_s) / (seq.emitted - 1))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


# --- the server -----------------------------------------------------------------------


class ServedEngine:
    """The engine on a paced virtual clock inside the server's event loop.

    ``clock()`` is wall time times ``speed``. The engine runs ``lag_s`` (wall seconds)
    behind it, so a request posted on time is always known before the engine reaches its
    arrival time: that is what makes an HTTP run deterministic.
    """

    def __init__(self, config: EngineConfig, speed: float, lag_s: float = 0.4):
        self.engine = BatchEngine(config)
        self.metrics = ServerMetrics()
        self.speed, self.lag_sim = float(speed), float(lag_s) * float(speed)
        self.t0 = time.perf_counter()
        self.now_s = 0.0  # the engine's virtual time
        self.late = 0     # requests that arrived after their declared time had passed
        self._queues: dict[int, asyncio.Queue] = {}
        self._next_id = 0
        self._wake: asyncio.Event | None = None

    def clock(self) -> float:
        return (time.perf_counter() - self.t0) * self.speed

    def submit(self, prompt_tokens: int, max_tokens: int,
               arrival_s: float | None) -> asyncio.Queue:
        arrival = self.clock() if arrival_s is None else float(arrival_s)
        if arrival < self.now_s:
            self.late += 1
            arrival = self.now_s
        rid, self._next_id = self._next_id, self._next_id + 1
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        self.engine.add(rid, arrival, prompt_tokens, max_tokens)
        if self._wake is not None:
            self._wake.set()
        return queue

    async def _until(self, t_sim: float) -> None:
        delay = (t_sim + self.lag_sim) / self.speed - (time.perf_counter() - self.t0)
        # Always yield, even when behind schedule: requests being received must get the
        # event loop before the engine moves past their arrival time.
        await asyncio.sleep(max(delay, 0.0))

    def _set_gauges(self) -> None:
        self.metrics.waiting.set(len(self.engine.waiting))
        self.metrics.running.set(len(self.engine.running))
        self.metrics.clock.set(self.now_s)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        eng = self.engine
        while True:
            await self._until(self.now_s)
            eng.admit_arrivals(self.now_s)
            duration = eng.begin_step(self.now_s)
            self._set_gauges()
            if duration is None:
                nxt = eng.next_arrival()
                if nxt is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._until(nxt)
                earliest = eng.next_arrival()  # a request posted meanwhile may come first
                self.now_s = max(self.now_s, nxt if earliest is None else min(earliest, nxt))
                continue
            t_end = self.now_s + duration
            await self._until(t_end)
            self.now_s = t_end
            for ev in eng.end_step(t_end):
                self.metrics.observe(ev)
                queue = self._queues.get(ev.req_id)
                if queue is not None:
                    queue.put_nowait(ev)
                    if ev.done:
                        queue.put_nowait(None)
                        del self._queues[ev.req_id]
            self._set_gauges()


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (a small subset of OpenAI's completions API)."""

    prompt: str = ""
    prompt_tokens: int | None = Field(None, ge=1, le=32768)  # overrides len(prompt.split())
    max_tokens: int = Field(16, ge=1, le=4096)
    arrival_s: float | None = Field(None, ge=0)  # scheduled arrival on the server clock


def create_app(config: EngineConfig | None = None, *, speed: float = 1.0, lag_s: float = 0.4):
    """The FastAPI app: POST /v1/completions (streams tokens as server-sent events),
    GET /metrics (Prometheus text format), GET /clock, GET /health."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response, StreamingResponse

    served = ServedEngine(config or EngineConfig(), speed, lag_s)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(served.run())
        yield
        task.cancel()

    app = FastAPI(title="labsupport simulated LLM server", lifespan=lifespan)
    app.state.served = served

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        n_prompt = body.prompt_tokens or len(body.prompt.split())
        if n_prompt < 1:
            raise HTTPException(422, "give a non-empty prompt or prompt_tokens >= 1")
        queue = served.submit(n_prompt, body.max_tokens, body.arrival_s)

        async def stream():
            while (ev := await queue.get()) is not None:
                word = VOCAB[(ev.req_id * 7 + ev.index) % len(VOCAB)]
                yield f"data: {json.dumps({'index': ev.index, 't_s': ev.t_s, 'text': word})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/metrics")
    async def metrics():
        # The engine's state is final up to max(its step start, the paced clock - lag).
        served.metrics.clock.set(max(served.now_s, served.clock() - served.lag_sim))
        return Response(served.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/clock")
    async def clock():
        return {"now_s": served.clock(), "engine_s": served.now_s, "speed": served.speed,
                "lag_s": served.lag_sim / served.speed, "late_requests": served.late}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


SERVER_NAME = "llm-server"  # one simulated LLM server per kernel: re-running replaces it


def start_server(config: EngineConfig | None = None, *, speed: float = 10.0,
                 port: int = 0) -> servers.ServerHandle:
    """Serve the engine on 127.0.0.1 in a background thread (stops any previous one).

    Runs through labsupport/servers.py, shared with notebooks 01 and 03; lifespan "on"
    because the app starts its engine loop in its lifespan handler."""
    config = config or EngineConfig()
    handle = servers.serve(create_app(config, speed=speed), SERVER_NAME, port=port,
                           lifespan="on")
    handle.config, handle.speed = config, speed  # what it simulates: to compare with simulate()
    return handle


def stop_server() -> None:
    """Stop the server this process started, if any."""
    servers.stop(SERVER_NAME)


# --- load generator and scraper -----------------------------------------------------


@dataclass
class LoadRun:
    """The result of a load test: client records, scrapes of /metrics, and the cost."""

    records: list[RequestRecord]
    scrapes: list[dict[str, Any]]
    wall_s: float
    late_requests: int


def parse_metrics(text: str) -> dict[str, Any]:
    """One scrape of the Prometheus text format as a plain dict: gauges and counters by
    sample name; each histogram as ``{"le": [...], "cumulative": [...], "sum", "count"}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples
                             if s.name.endswith("_bucket"))
            hist = {"le": [b for b, _ in buckets], "cumulative": [c for _, c in buckets]}
            for s in family.samples:
                if s.name.endswith("_sum"):
                    hist["sum"] = s.value
                elif s.name.endswith("_count"):
                    hist["count"] = s.value
            out[family.name] = hist
        else:
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[s.name] = s.value
    return out


def _cpu_seconds() -> float:
    import psutil
    times = psutil.Process().cpu_times()
    return times.user + times.system


def run_load(url: str, workload: Sequence[Request], *, scrape_every_s: float = 0.5) -> LoadRun:
    """Send ``workload`` open-loop (each request at its scheduled time, whatever happened
    to the earlier ones), stream every answer with httpx and timestamp each token;
    scrape /metrics every ``scrape_every_s`` simulated seconds meanwhile. Blocks until
    every answer is complete. Runs its own event loop in a thread, so it works inside
    Jupyter's running loop too."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["run"] = asyncio.run(_drive(url, list(workload), scrape_every_s))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="load-generator", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


async def _drive(url: str, workload: list[Request], scrape_every_s: float) -> LoadRun:
    import httpx

    wall0 = time.perf_counter()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        clock = (await client.get("/clock")).json()
        speed = clock["speed"]
        base = clock["now_s"]                    # the run's t = 0 on the server clock
        local0 = time.perf_counter() * speed     # the same instant on our clock

        def sim_now() -> float:
            return time.perf_counter() * speed - local0

        # Post each request a little ahead of its scheduled time: the server holds it until
        # its simulated arrival, so a busy CPU delaying our send cannot change the results.
        lead = clock["lag_s"] / 2  # wall seconds

        async def one(req: Request) -> RequestRecord:
            await asyncio.sleep(max(0.0, (req.arrival_s - sim_now()) / speed - lead))
            body = {"prompt_tokens": req.prompt_tokens, "max_tokens": req.output_tokens,
                    "arrival_s": base + req.arrival_s}
            times = []
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        times.append(json.loads(line[6:])["t_s"] - base)
            return RequestRecord(req.id, req.arrival_s, req.prompt_tokens, tuple(times))

        scrapes: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def scrape_loop() -> None:
            await asyncio.sleep(clock["lag_s"])  # the engine runs this far behind the clock
            last_cpu, last_wall = _cpu_seconds(), time.perf_counter()
            while True:
                finished = done.is_set()
                text = (await client.get("/metrics")).text
                cpu, wall = _cpu_seconds(), time.perf_counter()
                snap = parse_metrics(text)
                snap["t_s"] = snap.pop(CLOCK_METRIC) - base
                snap["cpu_percent"] = 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9)
                last_cpu, last_wall = cpu, wall
                scrapes.append(snap)
                if finished:
                    return
                try:
                    await asyncio.wait_for(done.wait(), scrape_every_s / speed)
                except TimeoutError:
                    pass

        scraper = asyncio.create_task(scrape_loop())
        records = await asyncio.gather(*(one(r) for r in workload))
        done.set()
        await scraper
        late = (await client.get("/clock")).json()["late_requests"]
    return LoadRun(list(records), scrapes, time.perf_counter() - wall0, late)


# --- synthetic scrapes from an offline simulation -----------------------------------


def scrapes_from_simulation(sim: SimResult, every_s: float = 1.0) -> list[dict[str, Any]]:
    """What scraping the server every ``every_s`` would have returned during ``sim``:
    the same dict shape as :func:`parse_metrics`. ``cpu_percent`` here is the engine's
    modelled host CPU (scheduler and detokenizer; the model itself runs on the
    accelerator), not a measurement."""
    firsts = np.array([t[0] for t in sim.server_token_times])
    lasts = np.array([t[-1] for t in sim.server_token_times])
    counts = np.array([len(t) for t in sim.server_token_times])
    all_tokens = np.sort(np.concatenate(sim.server_token_times))
    arr = sim.server_arrival_s
    ttfts = firsts - arr
    durations = lasts - arr
    with np.errstate(invalid="ignore", divide="ignore"):
        tpots = np.where(counts > 1, (lasts - firsts) / np.maximum(counts - 1, 1), np.nan)
    observed = {TTFT_METRIC: (firsts, ttfts), PROMPT_METRIC: (firsts, sim.prompt_tokens),
                DURATION_METRIC: (lasts, durations),
                TPOT_METRIC: (lasts[counts > 1], tpots[counts > 1])}
    cpu_t = np.array([t for t, _ in sim.host_cpu])
    cpu_s = np.array([c for _, c in sim.host_cpu])
    end = float(lasts.max())
    scrapes = []
    previous_cpu = 0.0
    for t in np.arange(0.0, end + every_s, every_s):
        snap: dict[str, Any] = {"t_s": float(t)}
        for name, (when, values) in observed.items():
            seen = np.asarray(values, dtype=float)[when <= t]
            bounds = list(HISTOGRAMS[name]) + [math.inf]
            snap[name] = {"le": bounds, "cumulative": [float(c) for c in bucketize(seen, bounds)],
                          "sum": float(seen.sum()), "count": float(seen.size)}
        snap[WAITING_METRIC] = float(np.sum(arr <= t) - np.sum(sim.admitted_s <= t))
        snap[RUNNING_METRIC] = float(np.sum(sim.admitted_s <= t) - np.sum(lasts <= t))
        snap[TOKENS_METRIC] = float(np.searchsorted(all_tokens, t, side="right"))
        cpu_now = float(np.interp(t, cpu_t, cpu_s))
        snap["cpu_percent"] = 100.0 * (cpu_now - previous_cpu) / every_s if t > 0 else 0.0
        previous_cpu = cpu_now
        scrapes.append(snap)
    return scrapes


# --- the dashboard --------------------------------------------------------------------


def dashboard_series(scrapes: Sequence[dict[str, Any]], window_s: float = 2.0) -> dict[str, np.ndarray]:
    """Per window of ``window_s``: TTFT p50 and p99 from the histogram's bucket increase
    (what ``histogram_quantile(0.99, rate(..._bucket[w]))`` computes), tokens per second
    from the counter's increase, the gauges at the window's end, and mean CPU."""
    out: dict[str, list[float]] = {k: [] for k in ("t_s", "ttft_p50_s", "ttft_p99_s",
                                                  "tokens_per_s", "waiting", "running",
                                                  "cpu_percent")}
    start = 0
    for i in range(1, len(scrapes)):
        a, b = scrapes[start], scrapes[i]
        if b["t_s"] - a["t_s"] < window_s - 1e-9 and i < len(scrapes) - 1:
            continue
        dt = b["t_s"] - a["t_s"]
        if dt <= 0:
            continue
        hist_a, hist_b = a[TTFT_METRIC], b[TTFT_METRIC]
        delta = [y - x for x, y in zip(hist_a["cumulative"], hist_b["cumulative"], strict=True)]
        out["t_s"].append(b["t_s"])
        out["ttft_p50_s"].append(histogram_quantile(0.50, hist_b["le"], delta))
        out["ttft_p99_s"].append(histogram_quantile(0.99, hist_b["le"], delta))
        out["tokens_per_s"].append((b[TOKENS_METRIC] - a[TOKENS_METRIC]) / dt)
        out["waiting"].append(b[WAITING_METRIC])
        out["running"].append(b[RUNNING_METRIC])
        out["cpu_percent"].append(float(np.mean([s["cpu_percent"] for s in scrapes[start + 1:i + 1]])))
        start = i
    return {k: np.array(v) for k, v in out.items()}


_PANELS = (("ttft", "TTFT (s)"), ("tokens", "tokens/s"), ("waiting", "waiting"),
           ("running", "running"), ("cpu", "CPU (%)"))


def dashboard_figure(series: dict[str, np.ndarray], title: str = "LLM server dashboard",
                     cpu_label: str = "process CPU") -> Any:
    """Five stacked panels sharing the time axis: TTFT p50/p99, tokens/s, queue depth,
    running requests, CPU. Traces are in a fixed order so a widget can update them."""
    from plotly.subplots import make_subplots

    from labsupport import plots

    fig = make_subplots(rows=5, cols=1, shared_xaxes=True, vertical_spacing=0.035,
                        subplot_titles=("TTFT per window (histogram_quantile)",
                                        "token throughput", "queue depth (waiting requests)",
                                        "running requests (batch)", cpu_label))
    colours = plots.PALETTE
    t = series["t_s"]
    fig.add_scatter(x=t, y=series["ttft_p50_s"], name="TTFT p50", row=1, col=1,
                    line=dict(color=colours[0]))
    fig.add_scatter(x=t, y=series["ttft_p99_s"], name="TTFT p99", row=1, col=1,
                    line=dict(color=colours[3]))
    fig.add_scatter(x=t, y=series["tokens_per_s"], name="tokens/s", row=2, col=1,
                    line=dict(color=colours[2]))
    fig.add_scatter(x=t, y=series["waiting"], name="waiting", row=3, col=1,
                    line=dict(color=colours[1], shape="hv"))
    fig.add_scatter(x=t, y=series["running"], name="running", row=4, col=1,
                    line=dict(color=colours[4], shape="hv"))
    fig.add_scatter(x=t, y=series["cpu_percent"], name="CPU %", row=5, col=1,
                    line=dict(color=colours[7]))
    for row, (_, label) in enumerate(_PANELS, start=1):
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_yaxes(range=[0, 100], row=5, col=1)
    fig.update_xaxes(title_text=plots.axis_title("time", "simulated s"), row=5, col=1)
    fig.update_layout(template="labsupport", title=title, height=820, showlegend=True,
                      margin=dict(l=70, r=20, t=80, b=50))
    return fig


def dashboard_summary(series: dict[str, np.ndarray]) -> str:
    """One line that says what the dashboard shows."""
    return (f"peak TTFT p99 {np.nanmax(series['ttft_p99_s']):.2f} s, "
            f"peak queue {np.max(series['waiting']):.0f}, "
            f"mean tokens/s {np.mean(series['tokens_per_s']):.0f}, "
            f"mean CPU {np.mean(series['cpu_percent']):.0f}%")


def explore(fig: Any, offered_load: float = 4.0, slots: int = 8, *, seed: int = 7,
            duration_s: float = 40.0) -> str:
    """The widget callback: simulate ``offered_load`` requests/s on ``slots`` batch slots
    offline and redraw the dashboard ``fig`` (a FigureWidget from dashboard_figure)."""
    config = replace(EngineConfig(), slots=int(slots))
    sim = simulate(make_workload(offered_load, duration_s, seed), config)
    series = dashboard_series(scrapes_from_simulation(sim, 1.0))
    keys = ("ttft_p50_s", "ttft_p99_s", "tokens_per_s", "waiting", "running", "cpu_percent")
    with fig.batch_update():
        for trace, key in zip(fig.data, keys, strict=True):
            trace.x = series["t_s"]
            trace.y = series[key]
    capacity = capacity_estimate(config)
    return (f"{offered_load:.1f} req/s on {slots} slots (capacity ≈ {capacity:.1f} req/s, "
            f"load {offered_load / capacity:.0%}): " + dashboard_summary(series))


# --- the scenario exercise ------------------------------------------------------------

CAUSES = ("queueing for batch slots", "slow decode", "long prompts", "network")
METRIC_NAMES = (TTFT_METRIC, TPOT_METRIC, DURATION_METRIC, PROMPT_METRIC, WAITING_METRIC,
                RUNNING_METRIC, TOKENS_METRIC, "cpu_percent")
# Which metric shows each cause. For "network" it is the server's own TTFT histogram:
# small on the server, large at the client, the difference is the network.
EVIDENCE = {"queueing for batch slots": WAITING_METRIC, "slow decode": TPOT_METRIC,
            "long prompts": PROMPT_METRIC, "network": TTFT_METRIC}
ANSWER_KEYS = ("ttft_p50_s", "ttft_p99_s", "tokens_per_s", "e2e_p99_s", "peak_queue_depth",
               "cause", "metric")

INCIDENT_SEED = 2024
INCIDENT_CONFIG = EngineConfig(slots=8)
INCIDENT_LOAD = dict(rate_per_s=6.5, duration_s=40.0)  # ~1.3x what 8 slots sustain
INCIDENT_SPEED = 20.0  # simulated seconds per wall second


@dataclass
class Incident:
    """What you are handed: per-request records and the scrapes of /metrics."""

    records: list[RequestRecord]
    scrapes: list[dict[str, Any]]
    description: str


def incident_workload(seed: int = INCIDENT_SEED) -> list[Request]:
    return make_workload(INCIDENT_LOAD["rate_per_s"], INCIDENT_LOAD["duration_s"], seed)


def replay_incident(seed: int = INCIDENT_SEED, *, speed: float = INCIDENT_SPEED) -> Incident:
    """Replay the incident over real HTTP: start the server, run the overload, scrape."""
    server = start_server(INCIDENT_CONFIG, speed=speed)
    run = run_load(server.url, incident_workload(seed))
    return Incident(run.records, run.scrapes,
                    f"{len(run.records)} requests over {INCIDENT_LOAD['duration_s']:.0f} s, "
                    f"{len(run.scrapes)} scrapes (HTTP, {run.wall_s:.1f} s wall)")


def _offline_incident(kind: str, seed: int) -> tuple[Incident, str]:
    """An incident simulated offline, with a known cause (the checker's unseen cases)."""
    base = EngineConfig()
    if kind == "queueing for batch slots":
        config, load, prompt, delay = replace(base, slots=6), 1.35, 400.0, 0.0
    elif kind == "slow decode":  # an iteration costs 8x: e.g. a throttled accelerator
        config, load, prompt, delay = replace(base, step_overhead_s=0.064, decode_s_per_seq=0.008), 0.35, 400.0, 0.0
    elif kind == "long prompts":  # pasted documents: prompts of ~6,000 tokens
        config, load, prompt, delay = base, 0.3, 6000.0, 0.0
    elif kind == "network":  # a far-away client: 400 ms each way
        config, load, prompt, delay = base, 0.4, 400.0, 0.4
    else:
        raise ValueError(kind)
    rate = load * capacity_estimate(config, prompt)
    sim = simulate(make_workload(rate, 40.0, seed, prompt_mean=prompt), config,
                   network_delay_s=delay)
    return Incident(sim.records, scrapes_from_simulation(sim, 1.0), kind), kind


def incident_truth(incident: Incident) -> dict[str, float]:
    """The numbers an answer must reproduce."""
    s = summarize(incident.records)
    return {"ttft_p50_s": s["ttft_p50_s"], "ttft_p99_s": s["ttft_p99_s"],
            "tokens_per_s": s["tokens_per_s"], "e2e_p99_s": s["e2e_p99_s"],
            "peak_queue_depth": max(x[WAITING_METRIC] for x in incident.scrapes)}


TOLERANCE = {"ttft_p50_s": 0.05, "ttft_p99_s": 0.05, "tokens_per_s": 0.05, "e2e_p99_s": 0.05,
             "peak_queue_depth": 0.10}  # relative; the queue also accepts +-2 requests
_UNITS = {"ttft_p50_s": "s", "ttft_p99_s": "s", "tokens_per_s": "tokens/s", "e2e_p99_s": "s",
          "peak_queue_depth": "requests"}


def _number_ok(key: str, value: Any, truth: float) -> tuple[bool, str]:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False, f"{type(value).__name__} {value!r:.40}"
    value = float(value)
    if math.isnan(value):
        return False, "NaN"
    slack = TOLERANCE[key] * abs(truth) + (2.0 if key == "peak_queue_depth" else 0.0)
    error = (value - truth) / truth if truth else math.inf
    return abs(value - truth) <= slack, f"{value:.3g} {_UNITS[key]} ({error:+.0%})"


def _copy(incident: Incident) -> Incident:
    import copy
    return copy.deepcopy(incident)


_HINTS = {
    "ttft_p50_s": "TTFT is each record's first token time minus its start; take the median.",
    "ttft_p99_s": "The exact p99 of the raw TTFTs (numpy.percentile). From the histogram, "
                  "a p99 beyond 10 s lands in the +Inf bucket and reads as 10 s.",
    "tokens_per_s": "All output tokens divided by (last token time - first start).",
    "e2e_p99_s": "E2E is last token minus start; take the 99th percentile, not the mean.",
    "peak_queue_depth": f"The largest value of the {WAITING_METRIC} gauge across the scrapes.",
}


def _checks(answer: Any, incident: Incident) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "your diagnose function")
    if bad:
        return [bad]
    checks: list[ex.Check] = []
    result = answer(_copy(incident).records, _copy(incident).scrapes)
    if not isinstance(result, dict):
        return [ex.Check("diagnose returns a dict", False, "a dict with keys " + ", ".join(ANSWER_KEYS),
                         f"{type(result).__name__} {result!r:.60}")]
    truth = incident_truth(incident)
    for key, true_value in truth.items():
        if key not in result:
            checks.append(ex.Check(key, False, f"{true_value:.3g} {_UNITS[key]}",
                                   f"missing (your keys: {sorted(result)[:6]})", _HINTS[key]))
            continue
        ok, found = _number_ok(key, result[key], true_value)
        tol = f"±{TOLERANCE[key]:.0%}" + (" or ±2" if key == "peak_queue_depth" else "")
        checks.append(ex.Check(key, ok, f"{true_value:.3g} {_UNITS[key]} ({tol})", found,
                               _HINTS[key]))
    cause, metric = result.get("cause"), result.get("metric")
    right = cause == "queueing for batch slots" and metric == EVIDENCE["queueing for batch slots"]
    checks.append(ex.Check(
        "diagnosis of the incident", right,
        "cause and the metric that shows it (one of obs.CAUSES, obs.METRIC_NAMES)",
        f"cause={cause!r}, metric={metric!r}",
        "TTFT grows while tokens/s and CPU stay flat: where do requests spend that time?"))

    # An unseen replay of the same kind of incident: the numbers must follow the data.
    unseen, _ = _offline_incident("queueing for batch slots", seed=11)
    other = answer(_copy(unseen).records, _copy(unseen).scrapes)
    off = []
    for key, true_value in incident_truth(unseen).items():
        ok, found = _number_ok(key, other.get(key) if isinstance(other, dict) else None, true_value)
        if not ok:
            off.append(f"{key} {found} vs {true_value:.3g}")
    checks.append(ex.Check("numbers on an unseen incident (6 slots, other seed)", not off,
                           "all five within tolerance", "; ".join(off) or "all five within tolerance",
                           "Compute every number from the records and scrapes you are given."))

    # Three unseen incidents with other causes: the diagnosis must follow the evidence.
    wrong = []
    for kind, seed in (("slow decode", 12), ("long prompts", 13), ("network", 14)):
        case, truth_cause = _offline_incident(kind, seed)
        got = answer(_copy(case).records, _copy(case).scrapes)
        got_cause = got.get("cause") if isinstance(got, dict) else None
        got_metric = got.get("metric") if isinstance(got, dict) else None
        if got_cause != truth_cause or got_metric != EVIDENCE[truth_cause]:
            wrong.append(f"{truth_cause}: you said {got_cause!r} / {got_metric!r}")
    checks.append(ex.Check("diagnosis of 3 unseen incidents", not wrong, "3/3 right",
                           f"{3 - len(wrong)}/3 right" + (": " + "; ".join(wrong) if wrong else ""),
                           "Decide from the data: queue depth, TPOT, prompt sizes, and server "
                           "TTFT (histogram) against client TTFT (records)."))
    return checks


def check_exercise(answer: Callable[..., dict], incident: Incident | None = None, *,
                   solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's ``diagnose(records, scrapes) -> dict`` on the incident of
    notebook 06 (replayed offline when ``incident`` is None) and on unseen incidents."""
    if incident is None:
        sim = simulate(incident_workload(), INCIDENT_CONFIG)
        incident = Incident(sim.records, scrapes_from_simulation(sim, 1.0), "offline replay")
    return ex.run_checks(EXERCISE_ID, lambda a: _checks(a, incident), answer,
                         solution_mode=solution_mode)


# --- shell entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the simulated LLM engine.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall second (1 = real time)")
    parser.add_argument("--slots", type=int, default=EngineConfig.slots)
    args = parser.parse_args(argv)
    # Real time from a shell: a short lag is enough (no scheduled arrivals to wait for).
    app = create_app(replace(EngineConfig(), slots=args.slots), speed=args.speed, lag_s=0.05)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
