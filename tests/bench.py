"""`make bench`: run every notebook with SOLUTION=True and report against the budgets.

Prints a table (notebook, wall seconds, peak kernel MB, verdict) and writes it to
build/bench.json. Pattern modules that define ``benchmark() -> dict`` (for example the
load-balancing simulator against SimPy) add their own figures to the report.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from labsupport import exercises
from notebook_runner import NOTEBOOKS, run

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench.json"
BUDGET_SECONDS = 45  # one notebook, Run All (COURSE_DESIGN.md, Budgets)
BUDGET_MB = 1000  # peak kernel memory (Binder guarantees 1 GB)
BUDGET_COURSE_SECONDS = 240  # all notebooks


def _verdict_text(record) -> str:
    if record.error:
        return "ERROR"
    if record.verdict is None:
        return "ran (no exercise)"
    return "passed" if record.verdict else "NOT YET"


def main() -> int:
    rows, ok = [], True
    print(f"{'notebook':<34} {'wall s':>7} {'peak MB':>8}  verdict")
    with tempfile.TemporaryDirectory(prefix="labsupport-bench-") as tmp:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")):
            record = run(path, Path(tmp) / path.stem, {"SOLUTION": True})
            within = (record.error is None and record.verdict is not False
                      and record.wall_seconds <= BUDGET_SECONDS and record.peak_mb <= BUDGET_MB)
            ok &= within
            flag = "" if within else "   <-- over budget or failed"
            print(f"{record.notebook:<34} {record.wall_seconds:>7.1f} {record.peak_mb:>8.0f}  "
                  f"{_verdict_text(record)}{flag}", flush=True)
            if record.error:
                print(f"    {record.error}")
            rows.append({**asdict(record), "verdict_text": _verdict_text(record)})
    total = sum(r["wall_seconds"] for r in rows)
    ok &= total <= BUDGET_COURSE_SECONDS
    print(f"{'total':<34} {total:>7.1f}   (budgets: {BUDGET_SECONDS} s and {BUDGET_MB} MB a "
          f"notebook, {BUDGET_COURSE_SECONDS} s the course)")

    extras = {}
    for ex in exercises.COURSE:
        try:
            module = importlib.import_module(f"labsupport.{ex.module}")
        except ModuleNotFoundError:
            continue  # notebook not written yet
        if hasattr(module, "benchmark"):
            started = time.perf_counter()
            extras[ex.module] = module.benchmark()
            print(f"\n{ex.module}.benchmark() ({time.perf_counter() - started:.1f} s):")
            for key, value in extras[ex.module].items():
                print(f"  {key}: {value}")

    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"notebooks": rows, "total_seconds": round(total, 1),
                               "module_benchmarks": extras}, indent=2, default=str))
    print(f"\nwritten: {OUT.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
