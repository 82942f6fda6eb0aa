"""Benchmark and command line of ``04_model_routing.ipynb`` (``make bench``).

:func:`benchmark` gives the scenario's numbers for the reference routers (all large, all
small, the oracle, the rules), the explore callback's milliseconds and the check cell's
seconds on the answer key. From the shell, offline and without the embedding model:
``python -m labsupport.bench.model_routing`` prints the reference routers' numbers;
``--benchmark`` prints :func:`benchmark` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import model_routing as mr
from labsupport.checks import model_routing as checks
from labsupport.explore import model_routing as explore

ROUTERS: dict[str, mr.Router] = {"all large": mr.all_large, "all small": mr.all_small,
                                 "oracle": mr.oracle_router, "rules": mr.rules_router}


def scenario_table(split: str = "test") -> dict[str, mr.Outcome]:
    """Cost, quality and latency of the reference routers on one split (no model needed)."""
    requests = mr.load_requests(split)
    return {name: mr.evaluate(requests, router(requests)) for name, router in ROUTERS.items()}


def _callback_ms(moves: int, seed: int) -> dict[str, float]:
    """The explore callback's milliseconds per slider move. Random scores stand in for the
    classifier's: a move does the same work, and no model is loaded."""
    test = mr.load_requests("test")
    lab = explore.build_lab(test, mr.random_scores(len(test), seed), seed=seed)
    fig = explore.build_figure(lab)
    times = []
    for alpha in np.linspace(0.05, 0.95, moves):
        started = time.perf_counter()
        explore.update_figure(fig, lab, float(alpha))
        times.append(1000 * (time.perf_counter() - started))
    return {"median": round(float(np.median(times)), 2), "max": round(max(times), 2),
            "moves": moves, "budget_median": 150}


def _check_seconds() -> dict[str, Any]:
    """The answer key built (trains the classifier) and the check cell run on it, without
    touching the learner's progress file."""
    from labsupport.solutions import model_routing as solution

    before = os.environ.get(ex.ENV_PROGRESS)
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        os.environ[ex.ENV_PROGRESS] = str(Path(tmp) / "progress.json")
        try:
            started = time.perf_counter()
            answer = solution.build_answer()
            built = time.perf_counter()
            result = checks.check_exercise(answer)
            done = time.perf_counter()
        finally:
            if before is None:
                os.environ.pop(ex.ENV_PROGRESS, None)
            else:
                os.environ[ex.ENV_PROGRESS] = before
    return {"answer key built (s)": round(built - started, 2),
            "check cell (s)": round(done - built, 3), "passed": result.passed,
            "budget_seconds": 10}


def benchmark(moves: int = 19, seed: int = 0) -> dict[str, Any]:
    """For ``make bench``: the scenario's numbers, the callback's ms, the check's seconds."""
    table = scenario_table()
    base = table["all large"].daily_cost_usd
    return {
        "routers on the test split, 10,000 requests a day": {
            name: {"to large (%)": round(100 * o.share_large, 1),
                   "USD/day": round(o.daily_cost_usd, 2),
                   "saving vs all large (%)": round(100 * (1 - o.daily_cost_usd / base), 1),
                   "quality (%)": round(100 * o.quality, 1),
                   "mean latency (s)": round(o.mean_latency_s, 2),
                   "p95 latency (s)": round(o.p95_latency_s, 2),
                   "complex to small": f"{o.complex_to_small}/{o.n_complex}"}
            for name, o in table.items()},
        "explore callback (ms)": _callback_ms(moves, seed),
        "check cell on the answer key": _check_seconds(),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the scenario's baseline, oracle and rules numbers (no model needed)."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport.bench.model_routing",
        description="Print cost, quality and latency of four routers (all large, all small, "
                    "the oracle, the rules) on the scenario's labelled requests. Offline: "
                    "the backends are simulated and no embedding model is loaded.")
    parser.add_argument("--split", choices=("train", "test"), default="test",
                        help="which labelled requests to evaluate (default: %(default)s)")
    parser.add_argument("--benchmark", action="store_true",
                        help="print benchmark() as JSON instead (what `make bench` records; "
                             "it trains the classifier: the embedding model or its cached "
                             "vectors are needed)")
    args = parser.parse_args(argv)
    if args.benchmark:
        print(json.dumps(benchmark(), indent=2))
        return 0
    for name, o in scenario_table(args.split).items():
        print(f"{name:10s} {100 * o.share_large:5.1f}% large | ${o.daily_cost_usd:7.2f}/day | "
              f"quality {100 * o.quality:5.1f}% | p50 {o.p50_latency_s:5.2f} s | "
              f"p99 {o.p99_latency_s:5.2f} s | complex→small {o.complex_to_small}/{o.n_complex}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
