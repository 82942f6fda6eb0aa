"""The four "Your turn" step checks of ``06_ai_observability.ipynb``.

Each judges one piece on inputs the notebook never showed, in simulated time (the
verdict never depends on the machine):

1. TTFT, TPOT and end-to-end latency of one request from its token timestamps;
2. ``histogram_quantile`` on classic buckets, including Prometheus's edge cases;
3. the mean queue depth from each request's wait (Little's law), against the time
   average of the queue's length;
4. the cause of an incident from a metrics snapshot, on unseen incidents of each kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport import exercises as ex


def _same(a: float, b: float, tol: float = 1e-9) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return abs(a - b) <= tol * max(1.0, abs(b))


# --- Step 1: one request's metrics ---------------------------------------------------------------

def _record(rng: np.random.Generator, k: int, tokens: int) -> obs.RequestRecord:
    start = float(rng.uniform(0, 100))
    first = start + float(rng.exponential(2.0))
    gaps = rng.exponential(0.05, tokens - 1)
    return obs.RequestRecord(k, start, int(rng.integers(10, 3000)),
                             tuple(np.r_[first, first + np.cumsum(gaps)].tolist()))


def _request_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    wrong = ""
    for k in range(200):
        rec = _record(rng, k, int(rng.integers(2, 300)))
        got = fn(rec)
        if not (isinstance(got, tuple) and len(got) == 3):
            raise TypeError(f"returned {got!r:.60}, not (ttft, tpot, e2e)")
        want = (obs.ttft(rec), obs.tpot(rec), obs.e2e_latency(rec))
        bad = [name for name, g, w in zip(("TTFT", "TPOT", "E2E"), got, want, strict=True)
               if not _same(ex.as_number(g, finite=False), w)]
        if bad:
            wrong = (f"record {k} ({rec.output_tokens} tokens, start {rec.start_s:.3f} s): "
                     + ", ".join(f"{n} {ex.as_number(g, finite=False):.4f} s vs {w:.4f} s"
                                 for n, g, w in zip(("TTFT", "TPOT", "E2E"), got, want, strict=True)
                                 if n in bad))
            break
    yield ex.Check("TTFT, TPOT and E2E of 200 unseen requests", not wrong,
                   "within 1e-9 of vLLM's definitions", wrong or "all equal",
                   hint="TTFT = first token − start; E2E = last token − start; TPOT = (E2E − "
                        "TTFT) / (tokens − 1): the gaps after the first token.")
    one = obs.RequestRecord(0, 1.0, 10, (1.4,))
    tpot_one = ex.as_number(fn(one)[1], finite=False)
    yield ex.Check("a one-token answer has no TPOT", math.isnan(tpot_one),
                   "TPOT = NaN (vLLM leaves one-token answers out)", f"{tpot_one}",
                   hint="With one token there is no time per *further* token: return math.nan, "
                        "not 0 (a zero would pull every percentile down).")


def step_1_checks(fn: Any, seed: int = 61) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your request-metrics function"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _request_rows(fn, seed), "request metrics", "random token timestamps")


# --- Step 2: histogram_quantile ----------------------------------------------------------------

INF = math.inf
EDGE_CASES: tuple[tuple[str, float, tuple[float, ...], tuple[float, ...]], ...] = (
    ("q below 0", -0.1, (0.1, 0.5, INF), (1, 3, 3)),
    ("q above 1", 1.5, (0.1, 0.5, INF), (1, 3, 3)),
    ("q is NaN", math.nan, (0.1, 0.5, INF), (1, 3, 3)),
    ("no observations", 0.9, (0.1, 0.5, INF), (0, 0, 0)),
    ("everything in +Inf", 0.99, (0.1, 0.5, INF), (0, 0, 7)),
    ("q = 0, lowest bucket empty", 0.0, (0.1, 0.5, INF), (0, 3, 3)),
    ("q = 1", 1.0, (0.1, 0.5, 1.0, INF), (2, 5, 9, 9)),
    ("a lowest bound at 0", 0.2, (0.0, 0.5, INF), (4, 10, 10)),
)


def _quantile_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    wrong = ""
    for _ in range(150):
        bounds = tuple(np.r_[np.sort(rng.choice(np.arange(1, 60), int(rng.integers(2, 12)),
                                                 replace=False)) / 10.0, INF].tolist())
        counts = tuple(np.cumsum(rng.integers(0, 50, len(bounds))).tolist())
        q = float(rng.uniform(0.01, 0.99))
        if counts[-1] == 0:
            continue
        got = ex.as_number(fn(q, list(bounds), list(counts)), finite=False)
        want = obs.histogram_quantile(q, bounds, counts)
        if not _same(got, want):
            wrong = f"q={q:.3f}, le={bounds}, cumulative={counts}: {got:.4g} vs {want:.4g}"
            break
    yield ex.Check("linear inside the bucket, on 150 unseen histograms", not wrong,
                   "Prometheus's value", wrong or "all equal",
                   hint="rank = q × count; the first bucket whose cumulative count ≥ rank; "
                        "interpolate from the bucket below's bound (0 for the lowest).")
    for name, q, bounds, counts in EDGE_CASES:  # each judged on its own: one may raise
        yield ex.judge(f"edge case: {name}", lambda name=name, q=q, bounds=bounds, counts=counts:
                       _edge_row(fn, name, q, bounds, counts),
                       case=f"histogram_quantile({q}, {list(bounds)}, {list(counts)})")


def _edge_row(fn: Callable[..., Any], name: str, q: float, bounds: tuple[float, ...],
              counts: tuple[float, ...]) -> ex.Check:
    want = obs.histogram_quantile(q, bounds, counts)
    got = ex.as_number(fn(q, list(bounds), list(counts)), finite=False)
    return ex.Check(f"edge case: {name}", _same(got, want), f"{want} (as Prometheus)", f"{got}",
                    hint="Prometheus: q < 0 → −Inf, q > 1 → +Inf, NaN → NaN, no observations "
                         "→ NaN; a rank in +Inf → the highest finite bound; an empty bucket at "
                         "the rank → NaN.")


def step_2_checks(fn: Any, seed: int = 63) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your histogram_quantile"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _quantile_rows(fn, seed), "histogram_quantile",
                     "random classic histograms and the edge cases")


# --- Step 3: Little's law for the queue ------------------------------------------------------------

def _queue_run(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A queue in simulated time: when each request joined and left it, and the window."""
    n = int(rng.integers(50, 400))
    span = float(rng.uniform(30, 120))
    joined = np.sort(rng.uniform(0, span * 0.8, n))
    waits = rng.exponential(float(rng.uniform(0.1, 5.0)), n)
    return joined, np.minimum(joined + waits, span), span


def _time_average_length(joined: np.ndarray, left: np.ndarray, span: float) -> float:
    """The queue's length, averaged over [0, span]: integrate the step function."""
    events = np.r_[joined, left]
    steps = np.r_[np.ones_like(joined), -np.ones_like(left)]
    order = np.argsort(events, kind="stable")
    t, length = events[order], np.cumsum(steps[order])
    return float(np.sum(length[:-1] * np.diff(t)) / span)


def _little_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    worst, where = 0.0, ""
    for k in range(40):
        joined, left, span = _queue_run(rng)
        truth = _time_average_length(joined, left, span)
        got = ex.as_number(fn(list(left - joined), span))
        gap = abs(got - truth) / truth
        if gap > worst:
            worst, where = gap, f"run {k}: {len(joined)} requests over {span:.1f} s"
    yield ex.Check("the time-average queue length, from the waits", worst <= 1e-6,
                   "within 1e-6 (relative) of the integral of the queue's length, on 40 "
                   "unseen runs", f"largest gap {worst:.3g}" + (f" ({where})" if where else ""),
                   hint="Little's law, L = λ · W: λ = requests / span, W = the mean wait. The "
                        "sum of the waits divided by the span is the same number.")


def step_3_checks(fn: Any, seed: int = 65) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your queue-depth function"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _little_rows(fn, seed), "queue depth", "simulated queues")


# --- Step 4: the cause from a snapshot ---------------------------------------------------------

def snapshot(incident: Any) -> dict[str, float]:
    """What a dashboard shows of an incident: five numbers (seconds, tokens, requests, %)."""
    s = obs.summarize(incident.records)
    return {"ttft_p99_s": s["ttft_p99_s"], "tpot_p50_s": s["tpot_p50_s"],
            "prompt_tokens_p50": float(np.median([r.prompt_tokens for r in incident.records])),
            "peak_queue_depth": float(max(x[obs.WAITING_METRIC] for x in incident.scrapes)),
            "cpu_percent": float(np.mean([x["cpu_percent"] for x in incident.scrapes]))}


def _cause_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    from labsupport.checks.ai_observability import CAUSES, EVIDENCE, offline_incident

    for kind in CAUSES:
        wrong = ""
        for seed in (31, 32):
            snap = snapshot(offline_incident(kind, seed))
            got = fn(dict(snap))
            if not (isinstance(got, tuple) and len(got) == 2):
                raise TypeError(f"returned {got!r:.60}, not (cause, metric)")
            cause, metric = got
            if not (type(cause) is str and cause == kind and type(metric) is str
                    and metric == EVIDENCE[kind]):
                wrong = (f"seed {seed}: cause={cause!r}, metric={metric!r} for "
                         + ", ".join(f"{k} {v:.3g}" for k, v in snap.items()))
                break
        yield ex.Check(f"an unseen incident: {kind}", not wrong,
                       f"({kind!r}, {EVIDENCE[kind]!r}) on two unseen seeds", wrong or "right",
                       hint="Queueing: a deep queue. Slow decode: a high TPOT with a short "
                            "queue. Long prompts: large prompts with a short queue. CPU says "
                            "nothing in any of them.")


def step_4_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your diagnosis"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _cause_rows(fn), "diagnosis", "unseen incidents of each cause")
