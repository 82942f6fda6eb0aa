"""Reference solution of the 06_ai_observability exercise (the answer key).

"The assistant feels slow; CPU is at 30%, memory normal, no errors." Compute the
metrics a user feels (TTFT and E2E at the tail, token throughput) and the one that
explains them, then name the cause from the evidence.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport.checks import ai_observability as checks

# --- Step 1: one request's metrics -------------------------------------------------------------

def request_metrics(record: obs.RequestRecord) -> tuple[float, float, float]:
    """(TTFT, TPOT, E2E) in seconds; TPOT is NaN for a one-token answer."""
    ttft = record.token_times_s[0] - record.start_s
    e2e = record.token_times_s[-1] - record.start_s
    n = len(record.token_times_s)
    return ttft, (e2e - ttft) / (n - 1) if n > 1 else math.nan, e2e


# --- Step 2: histogram_quantile -------------------------------------------------------------------

def histogram_quantile(q: float, bounds: list[float], cumulative: list[float]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0 or q > 1:
        return -math.inf if q < 0 else math.inf
    if cumulative[-1] == 0:
        return math.nan  # no observations
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]  # in the +Inf bucket: the highest finite bound
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    lower = bounds[b - 1] if b > 0 else 0.0
    below = cumulative[b - 1] if b > 0 else 0
    count = cumulative[b] - below
    return lower + (bounds[b] - lower) * (rank - below) / count if count else math.nan


# --- Step 3: Little's law -------------------------------------------------------------------------

def mean_queue_depth(waits_s: list[float], span_s: float) -> float:
    """L = λ · W = (n / span) · mean wait = total wait / span."""
    return sum(waits_s) / span_s


# --- Step 4: the cause from a snapshot ----------------------------------------------------------

def cause_from_snapshot(snapshot: dict[str, float]) -> tuple[str, str]:
    if snapshot["peak_queue_depth"] >= 5:  # requests wait for a batch slot
        cause = "queueing for batch slots"
    elif snapshot["prompt_tokens_p50"] > 2000:  # prefill dominates the first token
        cause = "long prompts"
    else:  # every token slow, queue empty
        cause = "slow decode"
    return cause, checks.EVIDENCE[cause]


# --- The scenario -------------------------------------------------------------------------------


def diagnose(records: list[obs.RequestRecord], scrapes: list[dict[str, Any]]) -> dict:
    ttfts = [rec.token_times_s[0] - rec.start_s for rec in records]
    e2es = [rec.token_times_s[-1] - rec.start_s for rec in records]
    tpots = [(e2e - t) / (rec.output_tokens - 1)
             for rec, t, e2e in zip(records, ttfts, e2es, strict=True) if rec.output_tokens > 1]
    tokens = sum(rec.output_tokens for rec in records)
    span = max(rec.token_times_s[-1] for rec in records) - min(rec.start_s for rec in records)
    peak_queue = max(s[obs.WAITING_METRIC] for s in scrapes)

    prompt_p50 = float(np.median([rec.prompt_tokens for rec in records]))

    if peak_queue >= 5:                                  # requests wait for a batch slot
        cause = "queueing for batch slots"
    elif prompt_p50 > 2000 and np.median(ttfts) > 0.5:   # prefill dominates the first token
        cause = "long prompts"
    elif np.median(tpots) > 0.06:                        # every token is slow, queue empty
        cause = "slow decode"
    else:
        cause = "queueing for batch slots"
    return {
        "ttft_p50_s": float(np.percentile(ttfts, 50)),
        "ttft_p99_s": float(np.percentile(ttfts, 99)),
        "tokens_per_s": tokens / span,
        "e2e_p99_s": float(np.percentile(e2es, 99)),
        "peak_queue_depth": float(peak_queue),
        "cause": cause,
        "metric": checks.EVIDENCE[cause],
    }


# --- The review quiz --------------------------------------------------------------------

QUIZ_ANSWERS = {"average-p99": 2, "inf-bucket": 2, "little": 30.0, "ttft-vs-tpot": 1, "cpu-30": 1}
