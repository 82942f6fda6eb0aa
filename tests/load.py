"""Busy processes beside a check: a verdict must not depend on the machine's load.

CI and classroom hubs are busy machines. ``with busy_processes(2): ...`` runs the body
while two other processes spin on the CPU (on a 2-core machine: every core taken), so
a check that leans on wall-clock timing shows it by changing its verdict.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

SPIN = "while True: pass"


@contextmanager
def busy_processes(n: int) -> Iterator[list[subprocess.Popen]]:
    """Run ``n`` processes that busy-loop until the block ends (then they are killed)."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]
    try:
        time.sleep(0.2 if n else 0)  # let them start spinning before the body runs
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
