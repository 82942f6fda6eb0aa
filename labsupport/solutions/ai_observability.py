"""Reference solution of the 06_ai_observability exercise (the answer key).

"The assistant feels slow; CPU is at 30%, memory normal, no errors." Compute the
metrics a user feels (TTFT and E2E at the tail, token throughput) and the one that
explains them, then name the cause from the evidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport.checks import ai_observability as checks


def diagnose(records: list[obs.RequestRecord], scrapes: list[dict[str, Any]]) -> dict:
    ttfts = [rec.token_times_s[0] - rec.start_s for rec in records]
    e2es = [rec.token_times_s[-1] - rec.start_s for rec in records]
    tpots = [(e2e - t) / (rec.output_tokens - 1)
             for rec, t, e2e in zip(records, ttfts, e2es, strict=True) if rec.output_tokens > 1]
    tokens = sum(rec.output_tokens for rec in records)
    span = max(rec.token_times_s[-1] for rec in records) - min(rec.start_s for rec in records)
    peak_queue = max(s[obs.WAITING_METRIC] for s in scrapes)

    # The server's own TTFT: its histogram's sum / count is an exact mean (no buckets).
    server_ttft = scrapes[-1][obs.TTFT_METRIC]
    server_mean_ttft = server_ttft["sum"] / server_ttft["count"]
    client_mean_ttft = float(np.mean(ttfts))
    prompt_p50 = float(np.median([rec.prompt_tokens for rec in records]))

    if peak_queue >= 5:                                  # requests wait for a batch slot
        cause = "queueing for batch slots"
    elif client_mean_ttft - server_mean_ttft > 0.1:      # time the server never saw
        cause = "network"
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
