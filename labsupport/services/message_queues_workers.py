"""The world around the queue of ``03_message_queues.ipynb``: documents, the result
store, the slow processing service, workers on a simulated clock, and worker processes
to kill with ``SIGKILL``.

- :class:`Document`, :class:`ResultStore`: the job and where its effect lands (step 4's
  :func:`~labsupport.message_queues.apply_once` runs there);
- :class:`ProcessingService`: 20 calls at a time, each takes ``processing_time``; it
  counts every call and what it returned, so a checker can tell real work from a fake;
- :class:`VirtualTime` and :func:`run_workers`: worker threads that take turns on a
  simulated clock. The queue, the store and your worker code are real; only the
  service's waiting is simulated, so a run gives the same numbers on a busy machine;
- :class:`FaultPlan`: crashes inside the service, inside the worker between two commits,
  and just before the delete;
- :func:`spawn_worker_process` / :func:`kill_hard`: a real worker process, started as
  ``python -m labsupport.services.message_queues_workers --db jobs.db``.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labsupport.message_queues import SCHEMA, SQS_VISIBILITY_TIMEOUT_DEFAULT, Message, Queue
from labsupport.message_queues import apply_once as apply_once_on
from labsupport.sqlite_db import Database

CORRUPT_MARKER = "%%CORRUPT%%"  # a document whose content starts with this always fails

# --- documents and the result store ---------------------------------------------------


@dataclass(frozen=True)
class Document:
    """An uploaded document: the job a worker processes."""

    doc_id: str
    name: str
    content: str

    @property
    def corrupt(self) -> bool:
        return self.content.startswith(CORRUPT_MARKER)

    def to_json(self) -> str:
        return json.dumps({"doc_id": self.doc_id, "name": self.name, "content": self.content},
                          ensure_ascii=False)  # "é" is 2 bytes, not the 6 of "\\u00e9"

    @classmethod
    def from_json(cls, text: str) -> Document:
        data = json.loads(text)
        return cls(str(data["doc_id"]), str(data.get("name", "")), str(data.get("content", "")))


class ResultStore:
    """Where processing leaves its effect (say, the search index), in a SQLite file.

    ``apply_once`` is step 4. ``record_effect`` applies the effect on every call. In
    ``with store.transaction() as tx:``, ``tx.mark_processed`` and ``tx.record_effect``
    commit together or not at all. ``on_commit`` (the checker's fault injection) is called
    with the document ids each committed write touched.
    """

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL",
                 on_commit: Callable[[set[str]], None] | None = None) -> None:
        self.db = Database(path, SCHEMA, synchronous)
        self.on_commit = on_commit

    def apply_once(self, doc_id: str, text: str) -> bool:
        """Step 4: the effect, unless ``doc_id`` was processed; True if applied now."""
        with self.db.lock:
            applied = apply_once_on(self.db.conn(), doc_id, text)
        self._committed({doc_id})
        return applied

    def record_effect(self, doc_id: str, text: str) -> None:
        """Apply the side effect once more (not idempotent on its own)."""
        with self.transaction() as tx:
            tx.record_effect(doc_id, text)

    def is_processed(self, doc_id: str) -> bool:
        return self.db.conn().execute("SELECT 1 FROM processed WHERE doc_id = ?",
                                      (doc_id,)).fetchone() is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """``with store.transaction() as tx:`` all or nothing, one writer at a time."""
        with self.db.write() as conn:
            tx = StoreTransaction(conn)
            yield tx
        self._committed(tx.touched)

    def in_transaction(self) -> bool:
        """Whether this thread is inside a transaction on the store (holding its lock)."""
        return self.db.conn().in_transaction

    def _committed(self, doc_ids: set[str]) -> None:
        if self.on_commit is not None and doc_ids:
            self.on_commit(doc_ids)

    def effects_per_doc(self) -> Counter:
        """How many times each document's effect was applied."""
        return Counter(dict(self.db.conn().execute(
            "SELECT doc_id, COUNT(*) FROM effects GROUP BY doc_id").fetchall()))

    def effects(self) -> list[tuple[str, str]]:
        """Every effect applied, in order: (doc_id, text)."""
        return self.db.conn().execute("SELECT doc_id, text FROM effects ORDER BY seq").fetchall()

    def close(self) -> None:
        self.db.close()


class StoreTransaction:
    """The operations available inside ``ResultStore.transaction()``."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.touched: set[str] = set()

    def mark_processed(self, doc_id: str) -> bool:
        """Insert into the processed-ids table; False if it was already there."""
        self.touched.add(doc_id)
        return self._conn.execute("INSERT OR IGNORE INTO processed (doc_id) VALUES (?)",
                                  (doc_id,)).rowcount == 1

    def record_effect(self, doc_id: str, text: str) -> None:
        self.touched.add(doc_id)
        self._conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))


# --- simulated time ---------------------------------------------------------------------


class Stopped(BaseException):
    """The simulated run is over: unwinds a worker thread wherever it waits."""


class Hung(RuntimeError):
    """A simulated thread kept the turn for too long (an endless loop, or a deadlock)."""


class VirtualTime:
    """Threads that take turns on a simulated clock: exactly one runs at a time, and the
    clock jumps to the next wake-up when the running one waits (:meth:`sleep`). Turns go
    by wake-up time, then by order of arrival, so a run is the same on any machine.

    Use it as the queue's ``clock`` and ``sleep``; ``watchdog`` (real seconds) ends a
    run whose thread never gives the turn back.
    """

    def __init__(self, watchdog: float = 30.0) -> None:
        self.now = 0.0  # simulated seconds
        self.watchdog = watchdog
        self._wakeups: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()
        self._turn_over = threading.Event()
        self._local = threading.local()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def __call__(self) -> float:
        return self.now

    def spawn(self, fn: Callable[[], None], delay: float = 0.0, name: str = "sim") -> None:
        """Run ``fn`` in a new thread, first at ``now + delay``."""
        go = threading.Event()

        def body() -> None:
            self._local.go = go
            go.wait()
            try:
                if not self._stopping:
                    fn()
            except Stopped:
                pass
            finally:
                self._turn_over.set()

        thread = threading.Thread(target=body, daemon=True, name=name)
        self._threads.append(thread)
        thread.start()
        heapq.heappush(self._wakeups, (self.now + delay, next(self._order), go))

    def sleep(self, seconds: float) -> None:
        """Give the turn back and wake ``seconds`` later in simulated time."""
        go = getattr(self._local, "go", None)
        if go is None:
            raise RuntimeError("VirtualTime.sleep called outside a simulated thread")
        if self._stopping:  # the run is over (a turn given back after Hung, for one)
            raise Stopped
        go.clear()
        heapq.heappush(self._wakeups, (self.now + max(0.0, seconds), next(self._order), go))
        self._turn_over.set()
        go.wait()
        if self._stopping:
            raise Stopped

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Give turns until simulated time ``until``, or until ``stop()``."""
        while self._wakeups and not stop() and self._wakeups[0][0] <= until:
            self.now, _, go = heapq.heappop(self._wakeups)
            self._turn_over.clear()
            go.set()
            if not self._turn_over.wait(self.watchdog):
                raise Hung(f"a worker kept the turn for {self.watchdog:g} s of real time "
                           f"at simulated {self.now:.2f} s: an endless loop, or waiting on a "
                           "lock another worker holds")

    def shutdown(self) -> None:
        """End every thread: each wakes and unwinds with :class:`Stopped`."""
        self._stopping = True
        for _, _, go in self._wakeups:
            go.set()
        for thread in self._threads:
            thread.join(timeout=5.0)


# --- the processing service and its faults ----------------------------------------------


class CorruptDocument(Exception):
    """A poison document: processing it fails every time."""


class ServiceOverloaded(Exception):
    """The processing service got more concurrent calls than its capacity."""


class CalledInsideTransaction(RuntimeError):
    """The service was called while the worker held the store's write lock."""


class WorkerCrashed(BaseException):
    """Injected: the worker process dies here. A BaseException, as a real crash cannot be
    caught: nothing after this line runs, no delete, no release."""


@dataclass
class FaultPlan:
    """Crashes to inject, once per document (named by ``doc_id`` or by name):

    - ``in_service``: halfway through the service call, before any effect;
    - ``after_commit``: right after the worker's first commit to the store for the
      document: between the effect and marking it processed, if those are two commits;
    - ``before_delete``: after the work, just before the delete: the message comes back.
    """

    in_service: set[str] = field(default_factory=set)
    after_commit: set[str] = field(default_factory=set)
    before_delete: set[str] = field(default_factory=set)
    fired: set[tuple[str, str]] = field(default_factory=set)  # (kind, document) done

    def due(self, kind: str, doc: Document | str) -> bool:
        """True (once) if a crash of ``kind`` is planned for ``doc`` and has not fired."""
        names = {doc.doc_id, doc.name} if isinstance(doc, Document) else {doc}
        for name in sorted(names & getattr(self, kind)):
            if (kind, name) not in self.fired:
                self.fired.add((kind, name))
                return True
        return False

    def crash(self, kind: str, doc: Document | str) -> None:
        """Raise :class:`WorkerCrashed` the first time ``kind`` happens to ``doc``."""
        if self.due(kind, doc):
            raise WorkerCrashed(f"{kind}: {getattr(doc, 'doc_id', doc)}")


class ProcessingService:
    """The slow downstream service: text extraction, ``capacity`` calls at a time.

    A call takes ``processing_time`` seconds of ``sleep`` (simulated, or real). A call
    beyond capacity fails at once with :class:`ServiceOverloaded`; a corrupt document
    fails after a fifth of the time. ``calls`` and ``returned`` count per document.
    """

    def __init__(self, processing_time: float = 0.1, capacity: int = 20, *,
                 sleep: Callable[[float], None] = time.sleep, faults: FaultPlan | None = None,
                 store: ResultStore | None = None) -> None:
        self.processing_time, self.capacity = processing_time, capacity  # seconds, calls
        self.sleep, self.faults, self.store = sleep, faults, store
        self._lock = threading.Lock()
        self._active = 0
        self.peak_concurrency = self.overloaded = 0
        self.calls: Counter = Counter()  # doc_id -> calls started
        self.returned: Counter = Counter()  # doc_id -> calls that returned the text

    def extract_text(self, doc: Document) -> str:
        """Process one document and return its text (the slow part)."""
        if self.store is not None and self.store.in_transaction():
            raise CalledInsideTransaction(
                "the service was called inside a store transaction: the write lock would be "
                f"held for {self.processing_time:g} s and every other worker would wait")
        with self._lock:
            if self._active >= self.capacity:
                self.overloaded += 1
                raise ServiceOverloaded(f"more than {self.capacity} concurrent calls")
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
            self.calls[doc.doc_id] += 1
        try:
            if self.faults is not None and self.faults.due("in_service", doc):
                self.sleep(self.processing_time / 2)  # halfway through, the worker dies
                raise WorkerCrashed(f"in_service: {doc.doc_id}")
            if doc.corrupt:
                self.sleep(self.processing_time / 5)
                raise CorruptDocument(f"cannot parse {doc.name or doc.doc_id}")
            self.sleep(self.processing_time)
            with self._lock:
                self.returned[doc.doc_id] += 1
            return doc.content.upper()  # the "extracted text"
        finally:
            with self._lock:
                self._active -= 1


# --- workers on the simulated clock ---------------------------------------------------

Worker = Callable[[Queue, ProcessingService, ResultStore], None]
"""One turn of a worker: receive at most one message, process it, delete it."""


class WorkerQueue:
    """The queue as a worker sees it: receive, delete, change_visibility. It notes which
    document each receipt handle belongs to, so that a crash can be injected just before
    a delete, and when each document's message was deleted."""

    def __init__(self, queue: Queue, faults: FaultPlan | None) -> None:
        self._queue, self._faults = queue, faults
        self.name = queue.name
        self._doc_of: dict[str, tuple[str, int]] = {}  # handle -> (doc_id, receive count)
        self._got = threading.local()
        self.deleted_at: dict[str, float] = {}  # doc_id -> simulated time of the delete

    def receive(self, max_messages: int = 1, visibility_timeout: float | None = None,
                wait_time_seconds: float = 0.0) -> list[Message]:
        got = self._queue.receive(max_messages, visibility_timeout, wait_time_seconds,
                                  poll_interval=0.05)
        self._got.count = getattr(self._got, "count", 0) + len(got)
        for m in got:
            self._doc_of[m.receipt_handle] = (Document.from_json(m.body).doc_id, m.receive_count)
        return got

    def delete(self, receipt_handle: str) -> None:
        doc_id, count = self._doc_of.get(receipt_handle, ("", 0))
        if self._faults is not None and count == 1:
            self._faults.crash("before_delete", doc_id)
        latest = self._queue.db.conn().execute(
            "SELECT 1 FROM messages WHERE receipt_handle = ?", (receipt_handle,)).fetchone()
        self._queue.delete(receipt_handle)
        if latest:
            self.deleted_at.setdefault(doc_id, self._queue.clock())

    def change_visibility(self, receipt_handle: str, visibility_timeout: float) -> None:
        self._queue.change_visibility(receipt_handle, visibility_timeout)

    def received_by_this_thread(self) -> int:
        return getattr(self._got, "count", 0)


@dataclass
class PoolStats:
    """What the workers did. Times are simulated seconds."""

    crashes: list[tuple[float, str]] = field(default_factory=list)  # (time, what)
    failures: Counter = field(default_factory=Counter)  # exception name -> count
    errors: list[str] = field(default_factory=list)  # the first few, in full


def run_workers(vt: VirtualTime, queue: Queue, worker: Worker, *, workers: int,
                service: ProcessingService, store: ResultStore,
                faults: FaultPlan | None = None, restart_delay: float = 0.05,
                poll_interval: float = 0.05) -> tuple[WorkerQueue, PoolStats]:
    """Start ``workers`` simulated threads that call ``worker`` in a loop; ``vt.run``
    then drives them. An exception from ``worker`` leaves the message in the queue (it
    comes back after its visibility timeout); a :class:`WorkerCrashed` ends the thread,
    and a replacement starts ``restart_delay`` seconds later, as an orchestrator restarts
    a crashed container. A turn that received nothing waits ``poll_interval`` seconds."""
    view = WorkerQueue(queue, faults)
    stats = PoolStats()

    def loop(slot: int) -> None:
        while True:
            before = view.received_by_this_thread()
            try:
                worker(view, service, store)
            except WorkerCrashed as crash:
                stats.crashes.append((vt.now, str(crash)))
                vt.spawn(lambda: loop(slot), restart_delay, name=f"mq-worker-{slot}")
                return
            except Exception as exc:  # noqa: BLE001 - a failed job stays queued: the point
                stats.failures[type(exc).__name__] += 1
                if len(stats.errors) < 3:
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
            vt.sleep(poll_interval if view.received_by_this_thread() == before else 0.0)

    for slot in range(workers):
        vt.spawn(lambda slot=slot: loop(slot), name=f"mq-worker-{slot}")
    return view, stats


def naive_worker(queue: Queue, service: ProcessingService, store: ResultStore) -> None:
    """Receive, process, apply the effect, delete: right only if every message is
    delivered exactly once, which SQS does not promise."""
    for msg in queue.receive(max_messages=1):
        doc = Document.from_json(msg.body)
        store.record_effect(doc.doc_id, service.extract_text(doc))
        queue.delete(msg.receipt_handle)


# --- worker processes (crash them with SIGKILL) ---------------------------------------


def spawn_worker_process(db_path: str | os.PathLike, *, queue: str = "jobs",
                         visibility_timeout: float = 1.0, processing_time: float = 0.01,
                         exit_when_empty: bool = False) -> subprocess.Popen:
    """Start ``python -m labsupport.services.message_queues_workers``: a real process
    that receives, processes with ``apply_once`` and deletes."""
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
    """One worker process: receive, process, apply the effect once, delete; until killed
    (or, with ``--exit-when-empty``, until the queue is empty). Its store is the queue's
    file (``--db``)."""
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
        doc = Document.from_json(messages[0].body)
        store.apply_once(doc.doc_id, service.extract_text(doc))
        queue.delete(messages[0].receipt_handle)


if __name__ == "__main__":
    worker_main()
