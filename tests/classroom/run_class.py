"""A class in session: N learners on a real JupyterHub, each running every notebook.

    python tests/classroom/run_class.py --learners 20 [--stagger 5] [--keep]

Prints the per-learner and per-notebook tables and writes everything measured to
``.classroom/class-N.json``. ``make classroom`` runs it through pytest
(``tests/classroom/test_class_on_hub.py``), which asserts what the class must keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from hub import REPO, Classroom, checksums
from learner import Learner, LearnerRun
from monitor import Monitor, crossings

from labsupport import classroom, exercises, plots

NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
RESULTS = REPO / ".classroom"


def idle_times(n: int) -> tuple[dict[str, float], str]:
    """Each notebook's Run All time with nobody else on the machine, and where it comes from:
    a class of one on this hub if one was held (a new learner: empty home, cold caches),
    else `make bench` (docs/run_times.json: warm caches, so 04 and 07 look faster)."""
    bench = json.loads((REPO / "docs" / "run_times.json").read_text())
    alone = RESULTS / "class-1.json"
    if n == 1 or not alone.exists():
        return bench["seconds"], f"make bench of {bench['measured_on']}"
    runs = json.loads(alone.read_text())["runs"][0]["notebooks"]
    return ({**bench["seconds"], **{nb["notebook"]: nb["run_all_s"] for nb in runs}},
            "a class of one on this hub")


def learner_names(n: int) -> list[str]:
    return [f"learner{i:02d}" for i in range(1, n + 1)]


def progress_failures(runs: list[LearnerRun], homes: dict[str, Path]) -> list[str]:
    """Each notebook a learner ran whose steps, scenario and quiz are not all passed in the
    learner's own progress file."""
    found = []
    for run in runs:
        progress = classroom.read_progress(homes[run.learner] / classroom.PROGRESS_FILE) or {}
        ran = {f"{nb.notebook}.ipynb" for nb in run.notebooks}
        for row in exercises.progress_rows(progress=progress):
            if row["notebook"] in ran and (row["steps_passed"] < row["steps"] or not row["passed"]
                    or row["quiz_score"] != row["quiz_out_of"]):
                found.append(f"{run.learner} {row['notebook']}: steps {row['steps_passed']}/"
                             f"{row['steps']}, scenario {'passed' if row['passed'] else 'not passed'}, "
                             f"quiz {row['quiz_score']}/{row['quiz_out_of']}")
    return found


def passed_cells(files: dict[str, Path]) -> list[int]:
    """The instructor's heat map, saved as .classroom/class-N-progress.html; per learner, how
    many of its cells (exercises) show "passed"."""
    classroom.heat_map(files).write_html(RESULTS / f"class-{len(files)}-progress.html")
    _, _, z = classroom.progress_matrix(files)
    return [sum(cell == classroom.PASSED for cell in row) for row in z]


def notebook_table(runs: list[LearnerRun], idle_s: dict[str, float]) -> list[dict]:
    rows = []
    for path in NOTEBOOKS:  # course order
        times = [nb.run_all_s for r in runs for nb in r.notebooks if nb.notebook == path.stem]
        if not times:
            continue
        idle = idle_s[path.stem]
        rows.append({"notebook": path.stem, "alone (s)": round(idle, 1),
                     "median (s)": round(statistics.median(times), 1),
                     "max (s)": round(max(times), 1),
                     "max / alone": round(max(times) / idle, 2)})
    return rows


def learner_table(runs: list[LearnerRun], seen) -> list[dict]:
    return [{"learner": r.learner, "server ready (s)": round(r.server_ready_s, 1),
             "first cell (s)": round(r.first_cell_s, 1),
             "all notebooks (s)": round(sum(nb.run_all_s + nb.kernel_start_s
                                            for nb in r.notebooks), 1),
             "CPU (s)": round(seen.cpu_s.get(r.learner, 0.0)),
             "peak memory (MB)": round(seen.peak_mb.get(r.learner, 0.0)),
             "errors": sum(len(nb.errors) for nb in r.notebooks) + bool(r.failure)}
            for r in runs]


async def hold_class(room: Classroom, stagger_s: float,
                     notebooks: list[Path]) -> list[LearnerRun]:
    learners = [Learner(room.url, room.token, name) for name in room.learners]
    return await asyncio.gather(*(learner.attend(notebooks, i * stagger_s)
                                  for i, learner in enumerate(learners)))


def run_class(n: int, stagger_s: float = 5.0, keep: bool = False,
              notebooks: list[Path] = NOTEBOOKS) -> dict:
    """Hold a class of ``n`` learners; everything measured, as a dict (also saved as JSON)."""
    idle_s, idle_from = idle_times(n)
    RESULTS.mkdir(exist_ok=True)
    with Classroom(learner_names(n), keep=keep) as room:
        monitor = Monitor(room.learners)
        monitor.start()
        started = time.perf_counter()
        runs = asyncio.run(hold_class(room, stagger_s, notebooks))
        wall_s = time.perf_counter() - started
        seen = monitor.stop()
        room.stop_hub()  # stops every server, so the checksums see a class that is over
        files = {name: home / classroom.PROGRESS_FILE for name, home in room.homes.items()}
        result = {
            "learners": n, "stagger_s": stagger_s, "class_wall_s": round(wall_s, 1),
            "shared_read_only_by": room.read_only_by,
            "shared_unchanged": room.shared_before == checksums(room.shared),
            "shared_files": len(room.shared_before),
            "runs": [asdict(r) for r in runs],
            "idle_from": idle_from,
            "notebook_table": notebook_table(runs, idle_s),
            "learner_table": learner_table(runs, seen),
            "peak_total_mb": round(seen.peak_total_mb), "peak_used_mb": round(seen.peak_used_mb),
            "peak_processes": dict(seen.processes),
            "crossings": crossings(seen, room.homes, room.shared),
            "connections": sorted(seen.connections),
            "written_outside_home": {
                name: sorted(p for p in paths if not Path(p).is_relative_to(room.homes[name]))
                for name, paths in seen.written.items()},
            "chroma_files": {name: sorted(p for p in paths if "chroma" in p.lower())
                             for name, paths in seen.written.items()},
            "progress_failures": progress_failures(runs, room.homes),
            "class_view": classroom.class_table(files),
            "heat_map_passed": passed_cells(files),
            "class_root": str(room.root) if keep else "",
        }
    out = RESULTS / f"class-{n}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


def report(result: dict) -> str:
    n = result["learners"]
    return "\n\n".join([
        str(plots.Table(result["notebook_table"],
                        caption=f"{n} learners: Run All per notebook under the class's load "
                                f"(alone: {result['idle_from']})")),
        str(plots.Table(result["learner_table"], caption=f"{n} learners")),
        str(plots.Table(result["class_view"], caption="the instructor's view")),
        f"class took {result['class_wall_s']} s; learners' processes at most "
        f"{result['peak_total_mb']} MB together; machine memory used at most "
        f"{result['peak_used_mb']} MB; shared folder ({result['shared_read_only_by']}, "
        f"{result['shared_files']} files) unchanged: {result['shared_unchanged']}; "
        f"crossings: {len(result['crossings'])}; progress failures: "
        f"{len(result['progress_failures'])}"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=20)
    parser.add_argument("--stagger", type=float, default=5.0, help="seconds between arrivals")
    parser.add_argument("--keep", action="store_true", help="keep the class folder")
    parser.add_argument("--only", default="0*", help="notebooks to run (a glob), e.g. '02*'")
    args = parser.parse_args()
    chosen = sorted((REPO / "notebooks").glob(f"{args.only}.ipynb"))
    print(report(run_class(args.learners, args.stagger, args.keep, chosen)))
