"""Watch the class from outside: memory per learner, files written, connections made.

A thread samples every process the hub started for a learner (the hub sets JUPYTERHUB_USER
in the server's environment and its kernels and services inherit it) once a second: the sum
of their resident memory, which files they hold open for writing, which loopback ports they
listen on and which they connect to. Sampling can miss a file open for less than a second;
the shared folder's checksums, taken before and after, catch any write there.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psutil

WRITE_MODES = {"w", "a", "r+", "a+", "w+"}
LOOPBACK = "127.0.0.1"


@dataclass
class Observations:
    peak_mb: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    peak_total_mb: float = 0.0  # every learner's processes together
    peak_used_mb: float = 0.0  # the machine's used memory (psutil), the hub and harness included
    processes: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # peak count
    cpu_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # CPU seconds
    written: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (learner, port connected to, whose port it was) for every loopback client connection
    connections: set[tuple[str, int, str]] = field(default_factory=set)


class Monitor(threading.Thread):
    def __init__(self, learners: list[str], interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.learners = set(learners)
        self.interval_s = interval_s
        self.seen = Observations()
        self._owner: dict[tuple[int, float], str | None] = {}  # (pid, start time) -> learner
        self._cpu: dict[tuple[int, float], float] = {}  # the CPU seconds last seen, per process
        self._halt = threading.Event()

    def owner(self, proc: psutil.Process) -> str | None:
        key = (proc.pid, proc.create_time())
        if key not in self._owner:
            learner = proc.environ().get("JUPYTERHUB_USER")
            self._owner[key] = learner if learner in self.learners else None
        return self._owner[key]

    def sample(self) -> None:
        memory: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        procs: dict[int, str | None] = {}
        for proc in psutil.process_iter():
            try:
                learner = procs[proc.pid] = self.owner(proc)
                if learner is None:
                    continue
                memory[learner] += proc.memory_info().rss / 2**20
                count[learner] += 1
                cpu = proc.cpu_times()
                self._cpu[(proc.pid, proc.create_time())] = cpu.user + cpu.system
                self.seen.written[learner] |= {f.path for f in proc.open_files()
                                               if f.mode in WRITE_MODES}
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        # One read of the system's sockets with their pids (root sees every pid).
        conns = psutil.net_connections(kind="inet")
        listeners = {c.laddr.port: procs.get(c.pid) or f"pid {c.pid}"
                     for c in conns if c.status == psutil.CONN_LISTEN}
        for c in conns:
            learner = procs.get(c.pid)
            if learner is None:
                continue
            if (c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.ip == LOOPBACK
                  and listeners.get(c.laddr.port) != learner and c.raddr.port in listeners):
                # a client socket (its own port is not one of the learner's listeners)
                self.seen.connections.add((learner, c.raddr.port, listeners[c.raddr.port]))
        for learner, mb in memory.items():
            self.seen.peak_mb[learner] = max(self.seen.peak_mb[learner], mb)
            self.seen.processes[learner] = max(self.seen.processes[learner], count[learner])
        self.seen.peak_total_mb = max(self.seen.peak_total_mb, sum(memory.values()))
        used = psutil.virtual_memory()
        self.seen.peak_used_mb = max(self.seen.peak_used_mb, (used.total - used.available) / 2**20)

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            self.sample()
            self._halt.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def stop(self) -> Observations:
        self._halt.set()
        self.join()
        for key, seconds in self._cpu.items():  # a process's CPU time as last seen alive
            self.seen.cpu_s[self._owner[key]] += seconds
        return self.seen


def crossings(seen: Observations, homes: dict[str, Path], shared: Path) -> list[str]:
    """Every way a learner reached beyond their own things: a file written in another
    learner's home or in the shared folder, or a connection to another learner's port."""
    found = []
    for learner, paths in seen.written.items():
        for path in paths:
            others = [n for n, h in homes.items() if n != learner and Path(path).is_relative_to(h)]
            if others:
                found.append(f"{learner} wrote {path} in {others[0]}'s home")
            elif Path(path).is_relative_to(shared):
                found.append(f"{learner} wrote {path} in the shared folder")
    for learner, port, whose in sorted(seen.connections):
        if whose in homes and whose != learner:
            found.append(f"{learner} connected to {whose}'s port {port}")
    return found
