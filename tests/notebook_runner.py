"""Execute one notebook and report wall time, peak kernel memory and the exercise verdict.

Used by tests/test_notebooks.py and tests/bench.py. Each run happens in a fresh
subprocess (``python tests/notebook_runner.py …``) so that the peak memory of that run's
kernel is its own: the kernel is a child of the runner, and after it exits
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is its peak resident set size. A sampler
thread reading the kernel's RSS backs that up.

``--passes 2`` runs every cell twice in the same kernel (a learner pressing Run All
twice): servers must not start twice, collections must not clash.

Every run is offline: connections beyond loopback are refused (tests/offline/).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OFFLINE_GUARD = Path(__file__).resolve().parent / "offline"  # holds a sitecustomize.py
CELL_TIMEOUT = 300  # seconds; a cell stuck longer than this is a bug, not a slow machine


@dataclass
class RunRecord:
    notebook: str
    parameters: dict[str, Any]
    passes: int
    wall_seconds: float  # first pass only: what a learner's Run All costs
    peak_mb: float  # peak resident memory of the kernel over all passes
    verdict: bool | None  # every exercise passed? None if the notebook has no check
    verdicts: dict[str, bool]  # exercise id (steps, scenario, quiz) -> passed
    error: str | None  # the first error, with its cell, if the run failed
    output: str  # the executed notebook


def read_verdicts(nb: Any) -> dict[str, bool]:
    """Exercise id -> "passed", from the last ``{"labsupport": …}`` box of each id."""
    verdicts: dict[str, bool] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("labsupport")
            if isinstance(meta, dict) and "passed" in meta and "exercise" in meta:
                verdicts[str(meta["exercise"])] = bool(meta["passed"])
    return verdicts


def read_verdict(nb: Any) -> bool | None:
    """True if every exercise box passed, False if any did not, None if there is none."""
    verdicts = read_verdicts(nb)
    return all(verdicts.values()) if verdicts else None


class _RssSampler(threading.Thread):
    """Polls the RSS of this process's children (the kernel) every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_bytes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._halt.wait(0.05):
            for child in me.children(recursive=False):
                try:
                    self.peak_bytes = max(self.peak_bytes, child.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _execute(path: Path, out: Path, parameters: dict[str, Any], passes: int, cwd: Path) -> tuple[float, Any, str | None]:
    """Run the notebook; return (first-pass wall seconds, executed notebook, error)."""
    import nbformat
    import papermill
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    started = time.perf_counter()
    if passes == 1:
        try:
            nb = papermill.execute_notebook(str(path), str(out), parameters=parameters,
                                            cwd=str(cwd), kernel_name="python3",
                                            progress_bar=False, execution_timeout=CELL_TIMEOUT)
            return time.perf_counter() - started, nb, None
        except papermill.PapermillExecutionError as exc:
            nb = nbformat.read(str(out), as_version=4)
            return (time.perf_counter() - started, nb,
                    f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}")

    nb = parameterize_notebook(load_notebook_node(str(path)), parameters)  # as papermill does
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    first_pass = 0.0
    error = None
    with client.setup_kernel():
        for run in range(passes):
            for index, cell in enumerate(nb.cells):
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as exc:
                    error = f"pass {run + 1}, cell {index}: {str(exc).strip().splitlines()[-1]}"
                    break
            if run == 0:
                first_pass = time.perf_counter() - started
            if error:
                break
    nbformat.write(nb, str(out))
    return first_pass, nb, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--parameters", default="{}", help="JSON object for the parameters cell")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--cwd", type=Path, default=None, help="working folder (default: output's)")
    args = parser.parse_args(argv)

    parameters = json.loads(args.parameters)
    sampler = _RssSampler()
    sampler.start()
    wall, nb, error = _execute(args.notebook, args.output, parameters, args.passes,
                               args.cwd or args.output.parent)
    sampler.stop()
    rusage_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    peak_mb = max(rusage_kb * 1024, sampler.peak_bytes) / 1e6
    record = RunRecord(args.notebook.name, parameters, args.passes, round(wall, 2),
                       round(peak_mb, 1), read_verdict(nb), read_verdicts(nb), error,
                       str(args.output))
    print(json.dumps(asdict(record)))
    return 0


def run(notebook: Path, workdir: Path, parameters: dict[str, Any], *, passes: int = 1,
        env: dict[str, str] | None = None, python: str = sys.executable) -> RunRecord:
    """Run ``notebook`` in a fresh runner process with its own temporary progress file.

    ``python`` is the interpreter of the runner, and so of the kernel it starts."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = "_".join(f"{k}-{v}" for k, v in parameters.items()) or "default"
    out = workdir / f"{notebook.stem}.{tag}.ipynb"
    # Offline, as in a workshop on bad wifi: the hub is told so, and tests/offline's
    # sitecustomize refuses any connection beyond loopback in the runner and the kernel.
    python_path = os.pathsep.join(filter(None, [str(OFFLINE_GUARD), os.environ.get("PYTHONPATH")]))
    run_env = {**os.environ, "LABSUPPORT_PROGRESS": str(workdir / "progress.json"),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": python_path,
               "PYDEVD_DISABLE_FILE_VALIDATION": "1", **(env or {})}
    proc = subprocess.run(
        [python, __file__, str(notebook), str(out), "--parameters",
         json.dumps(parameters), "--passes", str(passes), "--cwd", str(workdir)],
        capture_output=True, text=True, env=run_env, timeout=CELL_TIMEOUT * 4)
    if proc.returncode != 0 or not proc.stdout.strip():
        return RunRecord(notebook.name, parameters, passes, 0.0, 0.0, None, {},
                         f"runner failed (exit {proc.returncode}): {proc.stderr[-2000:]}", str(out))
    return RunRecord(**json.loads(proc.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    raise SystemExit(main())
