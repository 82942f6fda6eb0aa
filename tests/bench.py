"""`make bench` and `make solutions`: run every notebook with SOLUTION=True.

`make bench` prints a table (notebook, wall seconds, peak kernel MB, verdict) against the
budgets and writes it to build/bench.json. Then each ``labsupport/bench/<pattern>.py``
runs its ``benchmark() -> dict`` (for example the load-balancing simulator against SimPy).

`make solutions` (``--export-html build/solutions``) also exports each executed notebook
to HTML: the answer-key handout for instructors. Handouts are build output, never committed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from labsupport import exercises, start_here
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


def export_html(executed: Path, folder: Path) -> Path:
    """Write ``executed`` as a standalone HTML page in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", "--log-level", "WARN",
                    "--output-dir", str(folder), "--output", Path(executed).name.split(".")[0],
                    str(executed)], check=True)
    return folder / (Path(executed).name.split(".")[0] + ".html")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-html", type=Path, metavar="DIR",
                        help="also export each executed notebook to DIR as HTML")
    parser.add_argument("--only", default="", help="comma-separated notebook stems")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    rows, ok = [], True
    print(f"{'notebook':<34} {'wall s':>7} {'peak MB':>8}  verdict")
    with tempfile.TemporaryDirectory(prefix="labsupport-bench-") as tmp:
        for path in sorted(NOTEBOOKS.glob("*.ipynb")):
            if only and path.stem not in only:
                continue
            record = run(path, Path(tmp) / path.stem, {"SOLUTION": True})
            if args.export_html and record.error is None:
                export_html(Path(record.output), args.export_html)
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
    for ex in [] if (args.export_html or only) else exercises.COURSE:
        try:
            module = importlib.import_module(f"labsupport.bench.{ex.module}")
        except ModuleNotFoundError:
            continue  # this pattern has no benchmark
        if hasattr(module, "benchmark"):
            started = time.perf_counter()
            extras[ex.module] = module.benchmark()
            print(f"\nlabsupport.bench.{ex.module}.benchmark() "
                  f"({time.perf_counter() - started:.1f} s):")
            for key, value in extras[ex.module].items():
                print(f"  {key}: {value}")

    if only:  # a partial run does not replace the course's figures
        return 0 if ok else 1
    # Measured Run All seconds feed the estimated times (`make course-map` uses them).
    start_here.RUN_TIMES.parent.mkdir(exist_ok=True)
    start_here.RUN_TIMES.write_text(json.dumps({
        "measured_on": time.strftime("%Y-%m-%d"), "command": "make bench",
        "seconds": {Path(r["notebook"]).stem: r["wall_seconds"] for r in rows}}, indent=2) + "\n")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"notebooks": rows, "total_seconds": round(total, 1),
                               "module_benchmarks": extras}, indent=2, default=str))
    print(f"\nwritten: {OUT.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
