"""AI observability: TTFT, token throughput, P99 and queue depth of a streaming LLM server.

Backs ``notebooks/06_ai_observability.ipynb``: a workload; a simulated LLM inference
engine with continuous batching (batch slots, a waiting queue, prefill that grows with
the prompt, decode that grows with the batch); the per-request metrics of vLLM's serving
benchmark (TTFT, TPOT, ITL, E2E latency, token throughput, goodput); and percentiles
done right: Prometheus's ``histogram_quantile``, exact percentiles from raw samples,
Little's law. Time is simulated: :func:`simulate` runs the engine on a virtual clock in
simulated seconds, with no wall clock and no HTTP.

The engine served over HTTP with ``/metrics``, the load generator and the scraper are in
``labsupport/services/ai_observability.py``; the dashboard is in ``labsupport/explore/``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
HISTOGRAMS = {TTFT_METRIC: TTFT_BUCKETS, TPOT_METRIC: TPOT_BUCKETS,
              DURATION_METRIC: REQUEST_DURATION_BUCKETS, PROMPT_METRIC: PROMPT_TOKEN_BUCKETS}


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
    # An empty bucket at the rank (q = 0 over an empty lowest bucket): 0/0, NaN in Go too
    return start + (end - start) * (rank / count) if count else math.nan


def bucketize(values: Sequence[float], upper_bounds: Sequence[float]) -> list[int]:
    """Cumulative counts, as a Prometheus histogram would expose them (``le`` inclusive).
    ``upper_bounds`` gets +Inf appended if it lacks one."""
    bounds = list(upper_bounds)
    if not math.isinf(bounds[-1]):
        bounds.append(math.inf)
    arr = np.asarray(values, dtype=float)
    return [int(np.sum(arr <= b)) for b in bounds]


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

