"""The instructor's view of a class: every learner's progress, read from their progress files.

Each learner's checks record progress in ``~/.labsupport/progress.json`` (see
:func:`labsupport.exercises.record_attempt`). On a shared JupyterHub an instructor who can read
the learners' home folders runs::

    python -m labsupport.classroom progress "/home/*"

and gets one row per learner: steps passed, scenario passed, best quiz score, per notebook. In a
notebook, :func:`heat_map` draws the same as a plotly figure, one cell per exercise. Reading
never writes: an unreadable file is reported, not moved aside as the learner's own checks do.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

from labsupport import exercises as ex

PROGRESS_FILE = Path(".labsupport") / "progress.json"  # under each learner's home
# A heat-map cell: passed, tried but not passed yet, never tried.
PASSED, TRIED, NOT_TRIED = 1.0, 0.5, 0.0


def find_progress_files(pattern: str) -> dict[str, Path]:
    """Learner name -> progress file, for every match of ``pattern``, in name order.

    A match may be a home folder (its ``.labsupport/progress.json`` is used, and a learner
    who never ran a check is listed with no file yet) or a progress file itself (the
    learner is the home folder above ``.labsupport``, else the file's stem)."""
    out: dict[str, Path] = {}
    for match in sorted(glob.glob(os.path.expanduser(pattern))):
        path = Path(match)
        if path.is_dir():
            out[path.name] = path / PROGRESS_FILE
        elif path.is_file():
            name = path.parent.parent.name if path.parent.name == ".labsupport" else path.stem
            out[name] = path
    return out


def read_progress(path: Path) -> dict[str, dict[str, Any]] | None:
    """A learner's progress by exercise id; {} if there is no file yet, None if unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else None


def exercise_ids() -> list[str]:
    """Every exercise of the course in order: each notebook's steps, its scenario, its quiz."""
    return [i for e in ex.COURSE
            for i in (*(e.step_id(n) for n in range(1, e.steps + 1)), e.id, e.quiz_id)]


def class_table(files: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per learner: per notebook "steps passed/steps, ✓ when the scenario passed,
    quiz best/out of"; "unreadable" for a file that is not valid progress."""
    rows = []
    for learner, path in files.items():
        progress = read_progress(path)
        row: dict[str, Any] = {"learner": learner}
        if progress is None:
            rows.append({**row, "progress": f"unreadable: {path}"})
            continue
        for r in ex.progress_rows(progress=progress):
            quiz = f" q{r['quiz_score']}/{r['quiz_out_of']}" if r["quiz_score"] is not None else ""
            row[r["notebook"][:2]] = (f"{r['steps_passed']}/{r['steps']}"
                                      f"{' ✓' if r['passed'] else ''}{quiz}")
        row["scenarios passed"] = sum(bool(progress.get(e.id, {}).get("passed")) for e in ex.COURSE)
        rows.append(row)
    return rows


def progress_matrix(files: dict[str, Path]) -> tuple[list[str], list[str], list[list[float]]]:
    """(learners, exercise ids, z): z[i][j] is PASSED, TRIED or NOT_TRIED for learner i
    and exercise j (an unreadable file counts as nothing tried)."""
    ids = exercise_ids()
    z = []
    for path in files.values():
        progress = read_progress(path) or {}
        z.append([PASSED if progress.get(i, {}).get("passed") else
                  TRIED if progress.get(i, {}).get("attempts") else NOT_TRIED for i in ids])
    return list(files), ids, z


def heat_map(files: dict[str, Path]) -> Any:
    """The class as a heat map: a row per learner, a column per exercise."""
    from labsupport import plots

    learners, ids, z = progress_matrix(files)
    fig = plots.figure(f"Progress of {len(learners)} learners", ("exercise", None),
                       ("learner", None), height=max(300, 120 + 22 * len(learners)))
    fig.add_heatmap(x=ids, y=learners, z=z, zmin=0, zmax=1, xgap=1, ygap=1,
                    colorscale=[[0, "#eeeeee"], [0.5, "#f2b134"], [1, "#2a9d5c"]],
                    colorbar=dict(tickvals=[NOT_TRIED, TRIED, PASSED],
                                  ticktext=["not tried", "tried", "passed"]))
    fig.update_yaxes(autorange="reversed")  # the first learner on top, as in the table
    return fig


def main(argv: list[str] | None = None) -> int:
    """``progress PATTERN``: print the class table for the homes (or files) PATTERN matches."""
    import argparse

    from labsupport import plots

    parser = argparse.ArgumentParser(prog="python -m labsupport.classroom")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("progress", help="who passed which step, scenario and quiz")
    show.add_argument("pattern", help='home folders or progress files, e.g. "/home/*"')
    args = parser.parse_args(argv)
    files = find_progress_files(args.pattern)
    if not files:
        print(f"no home folder or progress file matches {args.pattern!r}")
        return 1
    print(plots.Table(class_table(files), caption=f"{len(files)} learners ({args.pattern})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
