"""Benchmark and command line of ``08_capstone_ai_assistant.ipynb`` (``make bench``).

:func:`benchmark` gives the game day's numbers: each fault's headline metric as the incident
shows it and with the answer key's fix, the seconds each check takes, the final check's
seconds, and the noon widget's callback milliseconds. From the shell:
``python -m labsupport.bench.capstone`` prints the game-day table.
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

from labsupport import capstone as cap
from labsupport import exercises as ex
from labsupport.checks import capstone as checks

HEADLINE = {  # the metric that shows each fault best
    "lost response": "questions billed twice", "slow replica": "p99 latency (s)",
    "upload burst": "jobs lost", "everything to the large model": "cost per day (USD)",
    "chunks cut mid-sentence": "recall on gold questions",
    "queueing for batch slots": "TTFT p99 (s)", "tenant filter missing": "cross-tenant results (related)"}


def game_day_table() -> dict[str, dict[str, Any]]:
    """Per incident: the headline metric during the incident and with the answer key's fix."""
    from labsupport.solutions import capstone as solution

    table = {}
    for n, fault in enumerate(checks.INCIDENT_ORDER, start=1):
        metric = HEADLINE[fault]
        before = checks.measure(n)[metric]
        after = checks.measure(n, solution.FIXES[fault])[metric]
        table[f"{n}. {fault}"] = {"metric": metric, "incident": _round(before),
                                  "answer key's fix": _round(after)}
    return table


def _round(value: Any) -> Any:
    return round(float(value), 3) if isinstance(value, float) else value


def _check_seconds() -> dict[str, Any]:
    """Each incident's check and the final check on the answer key, in seconds, without
    touching the learner's progress file (the first call loads the model and Chroma)."""
    from labsupport.solutions import capstone as solution

    before = os.environ.get(ex.ENV_PROGRESS)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="capstone-bench-") as tmp:
        os.environ[ex.ENV_PROGRESS] = str(Path(tmp) / "progress.json")
        try:
            for n, fault in enumerate(checks.INCIDENT_ORDER, start=1):
                started = time.perf_counter()
                passed = checks.check_step(n, solution.incident_answer(n)).passed
                out[f"incident {n} ({fault})"] = {"seconds": round(time.perf_counter() - started, 2),
                                                  "passed": passed}
            started = time.perf_counter()
            passed = checks.check_exercise(solution.hardened_settings()).passed
            out["final check"] = {"seconds": round(time.perf_counter() - started, 2),
                                  "passed": passed}
        finally:
            if before is None:
                os.environ.pop(ex.ENV_PROGRESS, None)
            else:
                os.environ[ex.ENV_PROGRESS] = before
    out["budget_seconds"] = 10
    return out


def _callback_ms(moves: int = 12) -> dict[str, float]:
    """The noon widget's callback (10,000 simulated answers), milliseconds per move."""
    from labsupport.explore import capstone as explore

    fig = explore.tier_figure()
    times = []
    for i in range(moves):
        started = time.perf_counter()
        explore.tier_update(fig, cap.BALANCERS[i % len(cap.BALANCERS)], bool(i % 2), 3, 3.0)
        times.append(1000 * (time.perf_counter() - started))
    return {"median": round(float(np.median(times)), 2), "max": round(max(times), 2),
            "moves": moves, "budget_median": 150}


def benchmark() -> dict[str, Any]:
    """For ``make bench``: the game day, the checks' seconds, the callback's ms."""
    return {"game day (headline metric)": game_day_table(),
            "check cells on the answer key": _check_seconds(),
            "explore callback (ms)": _callback_ms()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labsupport.bench.capstone",
        description="Print each game-day incident's headline metric, during the incident and "
                    "with the answer key's fix (offline; the tenant incident loads the model).")
    parser.add_argument("--benchmark", action="store_true",
                        help="print benchmark() as JSON instead (what `make bench` records)")
    args = parser.parse_args(argv)
    if args.benchmark:
        print(json.dumps(benchmark(), indent=2, default=str))
        return 0
    for name, row in game_day_table().items():
        fixed = row["answer key's fix"]
        print(f"{name:38s} {row['metric']:34s} {row['incident']!s:>10} -> {fixed!s:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
