"""Workers for ``03_message_queues.ipynb``: the processing service, a worker pool that
crashes on purpose, and worker processes to kill with ``SIGKILL``.

- :class:`ProcessingService`: the slow service (20 at a time) a worker calls;
- :class:`WorkerPool`: worker threads that receive, process and delete; faults are
  injected with :class:`FaultPlan`;
- :func:`spawn_worker_process` / :func:`kill_hard`: a worker in its own process, started
  as ``python -m labsupport.services.message_queues_workers --db jobs.db``.

This module imports only the mechanism and numpy, so a worker process starts quickly.
The notebook reaches these names through ``labsupport.services.message_queues``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labsupport.message_queues import (
    SQS_VISIBILITY_TIMEOUT_DEFAULT,
    Document,
    Handler,
    Queue,
    ResultStore,
    process_idempotent,
)

# --- the processing service -----------------------------------------------------------


class CorruptDocument(Exception):
    """A poison document: processing it fails every time."""


class ServiceOverloaded(Exception):
    """The processing service got more concurrent calls than its capacity."""


class ProcessingService:
    """The slow downstream service: text extraction, ``capacity`` calls at a time.

    A call takes ``processing_time`` seconds (simulated with sleep, so it costs no CPU).
    A call beyond capacity fails at once with :class:`ServiceOverloaded`; a corrupt
    document fails after ``processing_time * corrupt_fraction``.
    """

    def __init__(self, processing_time: float = 0.1, capacity: int = 20,
                 corrupt_fraction: float = 0.2) -> None:
        self.processing_time = processing_time  # seconds per document
        self.capacity = capacity
        self.corrupt_fraction = corrupt_fraction
        self._slots = threading.BoundedSemaphore(capacity)
        self._lock = threading.Lock()
        self.calls = 0
        self.overloaded = 0
        self.peak_concurrency = 0
        self._active = 0

    def extract_text(self, doc: Document) -> str:
        """Process one document and return its text (the slow part)."""
        if not self._slots.acquire(blocking=False):
            with self._lock:
                self.overloaded += 1
            raise ServiceOverloaded(f"more than {self.capacity} concurrent calls")
        try:
            with self._lock:
                self.calls += 1
                self._active += 1
                self.peak_concurrency = max(self.peak_concurrency, self._active)
            if doc.corrupt:
                time.sleep(self.processing_time * self.corrupt_fraction)
                raise CorruptDocument(f"cannot parse {doc.name or doc.doc_id}")
            time.sleep(self.processing_time)
            return doc.content.upper()  # the "extracted text"
        finally:
            with self._lock:
                self._active -= 1
            self._slots.release()


# --- workers --------------------------------------------------------------------------


class WorkerCrashed(Exception):
    """Injected: the worker dies, without deleting or releasing its message."""


@dataclass
class FaultPlan:
    """Faults to inject, on the first delivery of a document (by ``doc_id`` or by name):

    - ``crash_on``: the worker dies mid-job, *before* the handler runs (no effect yet);
    - ``crash_after_effect_on``: the worker dies *after* the handler returned (its effect
      is committed) and *before* the delete: the classic at-least-once case, where the
      message comes back and a non-idempotent handler applies the effect a second time;
    - ``crash_rate``: a crash before the handler at random, per delivery.
    """

    crash_on: set[str] = field(default_factory=set)
    crash_rate: float = 0.0
    seed: int = 0
    crash_after_effect_on: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._lock = threading.Lock()

    def should_crash(self, doc: Document, receive_count: int) -> bool:
        if receive_count == 1 and (doc.doc_id in self.crash_on or doc.name in self.crash_on):
            return True
        if self.crash_rate > 0:
            with self._lock:
                return bool(self._rng.random() < self.crash_rate)
        return False

    def should_crash_after_effect(self, doc: Document, receive_count: int) -> bool:
        return receive_count == 1 and (doc.doc_id in self.crash_after_effect_on
                                       or doc.name in self.crash_after_effect_on)


@dataclass
class PoolStats:
    """What the workers saw. Times are ``time.time()`` seconds."""

    completed: list[tuple[float, str]] = field(default_factory=list)  # (deleted at, doc_id)
    crashes: list[tuple[float, str]] = field(default_factory=list)  # (crashed at, doc_id)
    failures: Counter = field(default_factory=Counter)  # exception name -> count
    stale_deletes: int = 0  # delete refused: the message was received again meanwhile
    receives: int = 0


class WorkerPool:
    """``workers`` threads, each: receive one message, process it, delete it.

    A handler exception leaves the message undeleted, so it comes back after the
    visibility timeout. An injected :class:`WorkerCrashed` ends the worker thread; a
    supervisor starts a replacement after ``restart_delay`` seconds (as an orchestrator
    restarts a crashed container).
    """

    def __init__(self, queue: Queue, handler: Handler, *, workers: int,
                 service: ProcessingService, store: ResultStore,
                 faults: FaultPlan | None = None, restart_delay: float = 0.0,
                 poll_interval: float = 0.005) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.queue, self.handler, self.workers = queue, handler, workers
        self.service, self.store, self.faults = service, store, faults
        self.restart_delay, self.poll_interval = restart_delay, poll_interval
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> WorkerPool:
        for slot in range(self.workers):
            self._spawn(slot)
        return self

    def _spawn(self, slot: int) -> None:
        if self._stop.is_set():
            return
        thread = threading.Thread(target=self._run, args=(slot,), daemon=True,
                                  name=f"mq-worker-{slot}")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _run(self, slot: int) -> None:
        try:
            while not self._stop.is_set():
                self._step()
        except WorkerCrashed as crash:
            with self._lock:
                self.stats.crashes.append((time.time(), str(crash)))
            restart = threading.Timer(self.restart_delay, self._spawn, args=(slot,))
            restart.daemon = True
            restart.start()
        finally:
            self.queue.close()
            self.store.close()

    def _step(self) -> None:
        messages = self.queue.receive(1, wait_time_seconds=0.05, poll_interval=self.poll_interval)
        if not messages:
            return
        msg = messages[0]
        with self._lock:
            self.stats.receives += 1
        doc = Document.from_json(msg.body)
        if self.faults and self.faults.should_crash(doc, msg.receive_count):
            time.sleep(self.service.processing_time / 2)  # halfway through the job
            raise WorkerCrashed(doc.doc_id)
        try:
            self.handler(doc, self.service, self.store)
        except Exception as exc:  # noqa: BLE001 - a failed job stays queued; that is the point
            with self._lock:
                self.stats.failures[type(exc).__name__] += 1
            return
        if self.faults and self.faults.should_crash_after_effect(doc, msg.receive_count):
            raise WorkerCrashed(doc.doc_id)  # the effect is committed; the delete never happens
        deleted = self.queue.delete(msg.receipt_handle)
        with self._lock:
            if deleted:
                self.stats.completed.append((time.time(), doc.doc_id))
            else:
                self.stats.stale_deletes += 1

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until_drained(queue: Queue, timeout: float, poll: float = 0.01) -> float | None:
    """Wait until ``queue`` holds nothing visible or in flight; the time.time() it
    happened, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = queue.depth()
        if d["visible"] + d["in_flight"] + d["delayed"] == 0:
            return time.time()
        time.sleep(poll)
    return None


class DepthSampler:
    """Samples ``queue.depth()`` every ``interval`` seconds in a background thread."""

    def __init__(self, queue: Queue, interval: float = 0.02) -> None:
        self.queue, self.interval = queue, interval
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), visible, in flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mq-depth")

    def _run(self) -> None:
        while not self._stop.is_set():
            d = self.queue.depth()
            self.samples.append((time.time(), d["visible"] + d["delayed"], d["in_flight"]))
            self._stop.wait(self.interval)
        self.queue.close()

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- worker processes (crash them with SIGKILL) ---------------------------------------


def spawn_worker_process(db_path: str | os.PathLike, *, queue: str = "jobs",
                         visibility_timeout: float = 1.0, processing_time: float = 0.01,
                         exit_when_empty: bool = False) -> subprocess.Popen:
    """Start ``python -m labsupport.services.message_queues_workers`` processing
    idempotently."""
    cmd = [sys.executable, "-m", "labsupport.services.message_queues_workers",
           "--db", os.fspath(db_path), "--queue", queue,
           "--visibility-timeout", str(visibility_timeout),
           "--processing-time", str(processing_time)]
    if exit_when_empty:
        cmd.append("--exit-when-empty")
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds labsupport/
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL: no cleanup code runs, no message is deleted or released."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def worker_main(argv: list[str] | None = None) -> None:
    """One worker process: receive, process idempotently, delete; until killed (or, with
    ``--exit-when-empty``, until the queue is empty)."""
    parser = argparse.ArgumentParser(prog="python -m labsupport.services.message_queues_workers",
                                     description="Run one worker process of 03_message_queues.")
    parser.add_argument("--db", required=True, help="the queue's SQLite file")
    parser.add_argument("--queue", default="jobs")
    parser.add_argument("--visibility-timeout", type=float, default=SQS_VISIBILITY_TIMEOUT_DEFAULT,
                        help="seconds")
    parser.add_argument("--processing-time", type=float, default=0.1, help="seconds per document")
    parser.add_argument("--exit-when-empty", action="store_true")
    args = parser.parse_args(argv)
    queue = Queue(args.db, args.queue, visibility_timeout=args.visibility_timeout)
    store = ResultStore(args.db)
    service = ProcessingService(args.processing_time, capacity=1)
    while True:
        messages = queue.receive(1, wait_time_seconds=0.2)
        if not messages:
            if args.exit_when_empty and len(queue) == 0:
                return
            continue
        msg = messages[0]
        process_idempotent(Document.from_json(msg.body), service, store)
        queue.delete(msg.receipt_handle)


if __name__ == "__main__":
    worker_main()
