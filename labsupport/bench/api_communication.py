"""Benchmark of ``01_api_communication.ipynb`` (``make bench`` calls :func:`benchmark`).

Three figures: the check cell's wall time on the answer key (budget: 10 s a check cell),
the contention simulation at 100 clients per backoff strategy (simulated time, so these
numbers are the same on every machine), and what the caller waits on the synchronous and
the asynchronous order path (wall time, real HTTP on 127.0.0.1).

``python -m labsupport.bench.api_communication`` prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from labsupport import api_communication as api
from labsupport import exercises as ex
from labsupport.checks import api_communication as checks
from labsupport.explore import api_communication as explore
from labsupport.services import api_communication as services


def _check_seconds() -> dict[str, Any]:
    """Run the check cell on the answer key, without touching the learner's progress file."""
    from labsupport.solutions.api_communication import idempotent_charge

    before = os.environ.get(ex.ENV_PROGRESS)
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        os.environ[ex.ENV_PROGRESS] = str(Path(tmp) / "progress.json")
        try:
            started = time.perf_counter()
            result = checks.check_exercise(idempotent_charge)
            seconds = time.perf_counter() - started
        finally:
            if before is None:
                os.environ.pop(ex.ENV_PROGRESS, None)
            else:
                os.environ[ex.ENV_PROGRESS] = before
    return {"seconds": round(seconds, 2), "passed": result.passed, "budget_seconds": 10}


def _contention(clients: int, seeds: int) -> dict[str, dict[str, float]]:
    sweep = explore.contention_sweep([clients], seeds=seeds)
    return {api.STRATEGY_NAMES[s]: {"calls": round(float(sweep[s]["calls"][0]), 1),
                                    "completion_s": round(float(sweep[s]["completion_ms"][0]) / 1000, 3)}
            for s in api.STRATEGIES}


def _sync_vs_async(orders: int, work_seconds: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        _, pay = services.start_payment_service(api.Ledger(Path(tmp) / "ledger.sqlite"),
                                                name="bench-payments")
        _, srv = services.start_order_service(pay.url, work_seconds=work_seconds,
                                              name="bench-orders")
        try:
            timings = []
            with httpx.Client() as client:
                for i in range(orders):
                    timings.append(services.order_sync(srv.url, 1000 + i, client))
                    timings.append(services.order_async(srv.url, 1000 + i, client))
        finally:
            srv.stop()
            pay.stop()
    return {path: {field: round(statistics.median(getattr(t, field) for t in timings
                                                  if t.path == path), 3)
                   for field in ("caller_waits", "until_done", "work", "polls")}
            for path in ("sync", "async")}


def benchmark(clients: int = 100, seeds: int = 3, orders: int = 4,
              work_seconds: float = 0.3) -> dict[str, Any]:
    """The check cell's seconds, the jitter comparison and the sync/async medians (seconds)."""
    return {"check_cell_answer_key": _check_seconds(),
            f"contention_{clients}_clients_mean_of_{seeds}_seeds": _contention(clients, seeds),
            f"order_paths_seconds_median_of_{orders}": _sync_vs_async(orders, work_seconds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the benchmark figures as JSON.")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--orders", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(benchmark(args.clients, orders=args.orders), indent=2))


if __name__ == "__main__":
    main()
