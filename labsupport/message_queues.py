"""Backs ``03_message_queues.ipynb``: a durable queue with Amazon SQS semantics, workers
that may crash, a dead-letter queue, and a front door that answers ``202 Accepted``.

The parts, in the order the notebook meets them:

- :class:`Queue`: a durable queue in one SQLite file (standard library, WAL mode). Send;
  receive with a visibility timeout; delete (the acknowledgement) with the receipt handle
  of the *latest* receive; change visibility; a receive count per message; after
  ``max_receive_count`` receives a message moves to a dead-letter queue; retention.
  Safe for many threads and several processes at once; it survives a restart.
- :class:`ResultStore`: where processing leaves its effect, with a processed-ids table
  so at-least-once delivery gives exactly-once *effects*.
- :class:`ProcessingService` and :class:`WorkerPool`: the slow service (20 at a time)
  and the workers that call it; faults are injected with :class:`FaultPlan`.
- :func:`create_app` / :func:`serve`: the FastAPI front door (async upload, job status,
  and a synchronous endpoint for comparison); :func:`fire_requests` loads it over HTTP.
- :func:`simulate`: the same semantics in simulated time, fast enough for a widget.
- :func:`check_exercise`: the scenario exercise (500 uploads at 2pm).

From the shell::

    python -m labsupport.message_queues serve --port 8000     # the front door
    python -m labsupport.message_queues worker --db jobs.db   # one worker process
    python -m labsupport.message_queues bench                 # queue throughput

SQS facts used here come from the Amazon SQS Developer Guide (visibility timeout,
message retention, dead-letter queues) and the API reference (SetQueueAttributes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labsupport import exercises as ex
from labsupport import servers

if TYPE_CHECKING:  # heavy imports stay lazy: a worker process starts in a fraction of a second
    import plotly.graph_objects as go

# --- Amazon SQS limits (SQS Developer Guide; SetQueueAttributes API reference) ----------
SQS_VISIBILITY_TIMEOUT_DEFAULT = 30.0  # seconds
SQS_VISIBILITY_TIMEOUT_MAX = 12 * 3600.0  # seconds (0 s to 12 hours)
SQS_RETENTION_DEFAULT = 4 * 24 * 3600.0  # seconds (4 days)
SQS_RETENTION_MIN = 60.0  # seconds (1 minute)
SQS_RETENTION_MAX = 14 * 24 * 3600.0  # seconds (14 days)
SQS_MAX_RECEIVE_COUNT_RANGE = (1, 1000)  # the redrive policy's maxReceiveCount
SQS_LONG_POLL_MAX = 20.0  # seconds, ReceiveMessage WaitTimeSeconds
SQS_RECEIVE_BATCH_MAX = 10  # messages per ReceiveMessage

CORRUPT_MARKER = "%%CORRUPT%%"  # a document whose content starts with this always fails

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    id             TEXT NOT NULL UNIQUE,
    queue          TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        REAL NOT NULL,     -- original enqueue time, kept when moved to a DLQ
    visible_at     REAL NOT NULL,     -- receivable when visible_at <= now
    receive_count  INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE        -- the latest receive's handle; NULL before the first
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
CREATE TABLE IF NOT EXISTS processed (
    doc_id TEXT PRIMARY KEY,
    at     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS effects (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL,
    at     REAL NOT NULL,
    chars  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS effects_doc ON effects (doc_id);
"""

# --- connections ----------------------------------------------------------------------
# One SQLite connection per thread and file (a connection must not be shared between
# threads), and one in-process lock per file for writers: threads of one process then
# queue on a Python lock instead of SQLite's busy handler, which sleeps in steps of
# milliseconds. Other processes still wait through busy_timeout.
_local = threading.local()
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def _connection(path: str, synchronous: str) -> sqlite3.Connection:
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    conn = conns.get(path)
    if conn is None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")  # milliseconds: wait for other processes
        conns[path] = conn
    return conn


def _write_lock(path: str) -> threading.Lock:
    with _write_locks_guard:
        return _write_locks.setdefault(path, threading.Lock())


class _Db:
    """A SQLite file with per-thread connections and write transactions."""

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL (survives a process crash) or FULL "
                             "(also survives a power loss)")
        self.path = _key(path)
        self.synchronous = synchronous.upper()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with _write_lock(self.path):
            self.conn().executescript(_SCHEMA)  # IF NOT EXISTS: reopening keeps the data

    def conn(self) -> sqlite3.Connection:
        return _connection(self.path, self.synchronous)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, across threads and processes."""
        conn = self.conn()
        with _write_lock(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (other threads' close when the thread ends)."""
        conns = getattr(_local, "conns", {})
        conn = conns.pop(self.path, None)
        if conn is not None:
            conn.close()


# --- the queue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One received message. Keep ``receipt_handle``: delete needs it."""

    id: str
    body: str
    receipt_handle: str
    receive_count: int  # SQS: ApproximateReceiveCount, 1 on the first receive
    sent_at: float  # seconds (queue clock), the original enqueue time

    def json(self) -> Any:
        return json.loads(self.body)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be between {low:g} and {high:g}; got {value!r}")


class Queue:
    """A durable queue with the semantics of an Amazon SQS standard queue.

    Messages live in one SQLite file (several queues may share it). ``receive`` hands out
    the oldest visible messages first (SQS standard queues promise only best-effort
    order; a retried message here keeps its place at the front). It hides a
    message for ``visibility_timeout`` seconds and gives a fresh receipt handle; ``delete``
    with that handle is the acknowledgement. A message not deleted in time becomes
    visible again (at-least-once delivery). With ``dead_letter_queue`` and
    ``max_receive_count``, a message received that many times and still not deleted is
    moved to the dead-letter queue instead of being delivered again; it keeps its
    original ``sent_at``, as in SQS, so retention in the DLQ counts from the first send.

    ``clock`` (seconds) may be replaced in tests. All processes sharing a file must use
    the same clock (the default, ``time.time``, is the wall clock).

    Limits are SQS's: visibility timeout 0 s to 12 h (default 30 s); retention 60 s to
    14 days (default 4 days); ``max_receive_count`` 1 to 1000. ``check_limits=False``
    lifts the retention minimum for demonstrations in compressed time.
    """

    def __init__(self, path: str | os.PathLike, name: str = "jobs", *,
                 visibility_timeout: float = SQS_VISIBILITY_TIMEOUT_DEFAULT,
                 retention_period: float = SQS_RETENTION_DEFAULT,
                 dead_letter_queue: Queue | None = None,
                 max_receive_count: int | None = None,
                 clock: Callable[[], float] = time.time,
                 synchronous: str = "NORMAL",
                 check_limits: bool = True) -> None:
        _check_range("visibility_timeout", visibility_timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX)
        if check_limits:
            _check_range("retention_period", retention_period, SQS_RETENTION_MIN,
                         SQS_RETENTION_MAX)
        elif retention_period <= 0:
            raise ValueError("retention_period must be positive")
        if (dead_letter_queue is None) != (max_receive_count is None):
            raise ValueError("a redrive policy needs both dead_letter_queue and max_receive_count")
        if max_receive_count is not None:
            if isinstance(max_receive_count, bool) or not isinstance(max_receive_count, int):
                raise ValueError("max_receive_count must be an integer")
            _check_range("max_receive_count", max_receive_count, *SQS_MAX_RECEIVE_COUNT_RANGE)
        if dead_letter_queue is not None and dead_letter_queue.name == name:
            raise ValueError("a queue cannot be its own dead-letter queue")
        self.name = name
        self.visibility_timeout = float(visibility_timeout)
        self.retention_period = float(retention_period)
        self.dead_letter_queue = dead_letter_queue
        self.max_receive_count = max_receive_count
        self.clock = clock
        self.db = _Db(path, synchronous)

    @property
    def path(self) -> str:
        return self.db.path

    def __repr__(self) -> str:
        dlq = (f", dlq={self.dead_letter_queue.name!r}, max_receive_count="
               f"{self.max_receive_count}" if self.dead_letter_queue else "")
        return (f"Queue({self.name!r}, visibility_timeout={self.visibility_timeout:g} s, "
                f"retention={self.retention_period:g} s{dlq})")

    # -- the SQS API -------------------------------------------------------------------

    def send(self, body: str | dict, delay_seconds: float = 0.0) -> str:
        """Store one message durably and return its id (SendMessage). When this returns,
        the message is committed: a crash of this process cannot lose it."""
        text = body if isinstance(body, str) else json.dumps(body)
        message_id = uuid.uuid4().hex
        now = self.clock()
        with self.db.write() as conn:
            conn.execute("INSERT INTO messages (id, queue, body, sent_at, visible_at) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (message_id, self.name, text, now, now + delay_seconds))
        return message_id

    def send_batch(self, bodies: list[str | dict]) -> list[str]:
        """Send several messages in one transaction (SendMessageBatch allows 10)."""
        now = self.clock()
        rows = [(uuid.uuid4().hex, self.name, b if isinstance(b, str) else json.dumps(b), now, now)
                for b in bodies]
        with self.db.write() as conn:
            conn.executemany("INSERT INTO messages (id, queue, body, sent_at, visible_at) "
                             "VALUES (?, ?, ?, ?, ?)", rows)
        return [r[0] for r in rows]

    def receive(self, max_messages: int = 1, visibility_timeout: float | None = None,
                wait_time_seconds: float = 0.0, poll_interval: float = 0.005) -> list[Message]:
        """Receive up to ``max_messages`` visible messages and hide them (ReceiveMessage).

        Each returned message gets a new receipt handle, its receive count goes up by one,
        and it stays invisible for the visibility timeout. A message already received
        ``max_receive_count`` times moves to the dead-letter queue instead.
        ``wait_time_seconds > 0`` long-polls: wait up to that long for a message.
        """
        _check_range("max_messages", max_messages, 1, SQS_RECEIVE_BATCH_MAX)
        _check_range("wait_time_seconds", wait_time_seconds, 0, SQS_LONG_POLL_MAX)
        timeout = self.visibility_timeout if visibility_timeout is None else visibility_timeout
        _check_range("visibility_timeout", timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX)
        deadline = time.monotonic() + wait_time_seconds
        while True:
            if self._any_visible():  # a cheap read first: an empty poll takes no write lock
                got = self._receive_now(max_messages, timeout)
                if got:
                    return got
            if time.monotonic() >= deadline:
                return []
            time.sleep(poll_interval)

    def _any_visible(self) -> bool:
        row = self.db.conn().execute(
            "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
            (self.name, self.clock())).fetchone()
        return row is not None

    def _receive_now(self, max_messages: int, timeout: float) -> list[Message]:
        now = self.clock()
        out: list[Message] = []
        with self.db.write() as conn:
            self._expire(conn, now)
            while len(out) < max_messages:
                rows = conn.execute(
                    "SELECT seq, id, body, sent_at, receive_count FROM messages "
                    "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT ?",
                    (self.name, now, max_messages - len(out))).fetchall()
                if not rows:
                    break
                for seq, message_id, body, sent_at, count in rows:
                    if self.max_receive_count is not None and count >= self.max_receive_count:
                        # Redrive: received max_receive_count times and never deleted.
                        conn.execute("UPDATE messages SET queue = ?, visible_at = ?, "
                                     "receipt_handle = NULL WHERE seq = ?",
                                     (self.dead_letter_queue.name, now, seq))
                        continue
                    handle = uuid.uuid4().hex
                    conn.execute("UPDATE messages SET receive_count = receive_count + 1, "
                                 "receipt_handle = ?, visible_at = ? WHERE seq = ?",
                                 (handle, now + timeout, seq))
                    out.append(Message(message_id, body, handle, count + 1, sent_at))
        return out

    def _expire(self, conn: sqlite3.Connection, now: float) -> int:
        """Retention: drop messages older than the retention period, counted from sent_at."""
        cur = conn.execute("DELETE FROM messages WHERE queue = ? AND sent_at <= ?",
                           (self.name, now - self.retention_period))
        return cur.rowcount

    def delete(self, receipt_handle: str) -> bool:
        """Acknowledge: delete the message this receipt handle belongs to (DeleteMessage).

        Only the handle of the *latest* receive deletes. If the visibility timeout ran out
        and another consumer received the message since, this handle is stale and the
        message stays (SQS: "you must provide the most recently received receipt handle").
        Returns whether a message was deleted.
        """
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM messages WHERE receipt_handle = ? AND queue = ?",
                               (receipt_handle, self.name))
        return cur.rowcount == 1

    def change_visibility(self, receipt_handle: str, visibility_timeout: float) -> bool:
        """Hide the message for ``visibility_timeout`` seconds from now
        (ChangeMessageVisibility): extend it for a long job, or 0 to release it at once."""
        _check_range("visibility_timeout", visibility_timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX)
        with self.db.write() as conn:
            cur = conn.execute("UPDATE messages SET visible_at = ? "
                               "WHERE receipt_handle = ? AND queue = ?",
                               (self.clock() + visibility_timeout, receipt_handle, self.name))
        return cur.rowcount == 1

    def purge(self) -> int:
        """Delete every message of this queue (PurgeQueue); returns how many."""
        with self.db.write() as conn:
            return conn.execute("DELETE FROM messages WHERE queue = ?", (self.name,)).rowcount

    # -- looking inside ------------------------------------------------------------------

    def depth(self) -> dict[str, int]:
        """Messages ready to receive (``visible``), received and not yet deleted
        (``in_flight``), and sent with a delay (``delayed``). SQS calls the first two
        ApproximateNumberOfMessages and ApproximateNumberOfMessagesNotVisible."""
        now = self.clock()
        row = self.db.conn().execute(
            "SELECT COALESCE(SUM(visible_at <= ?), 0), "
            "COALESCE(SUM(visible_at > ? AND receive_count > 0), 0), "
            "COALESCE(SUM(visible_at > ? AND receive_count = 0), 0) "
            "FROM messages WHERE queue = ? AND sent_at > ?",
            (now, now, now, self.name, now - self.retention_period)).fetchone()
        return {"visible": int(row[0]), "in_flight": int(row[1]), "delayed": int(row[2])}

    def __len__(self) -> int:
        return sum(self.depth().values())

    def status(self, message_id: str) -> dict[str, Any] | None:
        """Where a message is: its queue, receive count and whether it is visible; None
        once deleted (or expired)."""
        row = self.db.conn().execute(
            "SELECT queue, receive_count, visible_at FROM messages WHERE id = ?",
            (message_id,)).fetchone()
        if row is None:
            return None
        return {"queue": row[0], "receive_count": row[1], "visible": row[2] <= self.clock()}

    def peek(self) -> list[dict[str, Any]]:
        """All messages of this queue, oldest first, without receiving them (for teaching)."""
        now = self.clock()
        rows = self.db.conn().execute(
            "SELECT id, body, receive_count, visible_at, sent_at FROM messages "
            "WHERE queue = ? ORDER BY seq", (self.name,)).fetchall()
        return [{"id": r[0], "body": r[1], "receive_count": r[2],
                 "visible_in_s": round(max(0.0, r[3] - now), 3), "age_s": round(now - r[4], 3)}
                for r in rows]

    def close(self) -> None:
        self.db.close()


# --- documents, the processing service, the result store ------------------------------


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
        return json.dumps({"doc_id": self.doc_id, "name": self.name, "content": self.content})

    @classmethod
    def from_json(cls, text: str) -> Document:
        data = json.loads(text)
        return cls(str(data["doc_id"]), str(data.get("name", "")), str(data.get("content", "")))


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


class ResultStore:
    """Where processing leaves its effect (say, the search index), in a SQLite file.

    ``record_effect`` applies the effect every time it is called: with at-least-once
    delivery a document can then be indexed twice. ``transaction()`` gives
    ``mark_processed`` (insert into the processed-ids table; False if the id is already
    there) and ``record_effect`` in one atomic transaction, which makes processing
    idempotent.
    """

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL") -> None:
        self.db = _Db(path, synchronous)

    def record_effect(self, doc_id: str, text: str) -> None:
        """Apply the side effect once more (not idempotent on its own)."""
        with self.db.write() as conn:
            _insert_effect(conn, doc_id, text)

    def is_processed(self, doc_id: str) -> bool:
        return self.db.conn().execute("SELECT 1 FROM processed WHERE doc_id = ?",
                                      (doc_id,)).fetchone() is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_StoreTx]:
        """``with store.transaction() as tx:`` all or nothing, one writer at a time."""
        with self.db.write() as conn:
            yield _StoreTx(conn)

    def effects_per_doc(self) -> Counter:
        """How many times each document's effect was applied."""
        rows = self.db.conn().execute("SELECT doc_id, COUNT(*) FROM effects GROUP BY doc_id")
        return Counter(dict(rows.fetchall()))

    def total_effects(self) -> int:
        return self.db.conn().execute("SELECT COUNT(*) FROM effects").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _insert_effect(conn: sqlite3.Connection, doc_id: str, text: str) -> None:
    conn.execute("INSERT INTO effects (doc_id, at, chars) VALUES (?, ?, ?)",
                 (doc_id, time.time(), len(text)))


class _StoreTx:
    """The operations available inside ``ResultStore.transaction()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def mark_processed(self, doc_id: str) -> bool:
        """Insert into the processed-ids table; False if it was already there."""
        cur = self._conn.execute("INSERT OR IGNORE INTO processed (doc_id, at) VALUES (?, ?)",
                                 (doc_id, time.time()))
        return cur.rowcount == 1

    def already_processed(self, doc_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM processed WHERE doc_id = ?",
                                  (doc_id,)).fetchone() is not None

    def record_effect(self, doc_id: str, text: str) -> None:
        _insert_effect(self._conn, doc_id, text)


Handler = Callable[[Document, ProcessingService, ResultStore], None]


def process_naive(doc: Document, service: ProcessingService, store: ResultStore) -> None:
    """Process a document and apply its effect: correct only if delivered exactly once."""
    text = service.extract_text(doc)
    store.record_effect(doc.doc_id, text)


def process_idempotent(doc: Document, service: ProcessingService, store: ResultStore) -> None:
    """Apply the effect at most once per document, however often it is delivered."""
    if store.is_processed(doc.doc_id):  # a redelivery of finished work: skip the slow call
        return
    text = service.extract_text(doc)
    with store.transaction() as tx:  # check and effect commit together, or not at all
        if tx.mark_processed(doc.doc_id):
            tx.record_effect(doc.doc_id, text)


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


# --- a whole pipeline run -------------------------------------------------------------


@dataclass
class PipelineConfig:
    """What the exercise asks you to choose."""

    workers: int
    visibility_timeout: float  # seconds
    max_receive_count: int | None  # None: no dead-letter queue
    handler: Handler


@dataclass
class RunResult:
    """Everything measured in one :func:`run_pipeline`. Times are seconds from the
    first send."""

    n_docs: int
    processing_time: float
    workers: int
    sent_at: dict[str, float]  # doc_id -> time sent
    completed_at: dict[str, float]  # doc_id -> time its message was deleted (first time)
    drained_at: float | None  # None: still not empty at the deadline
    depth: np.ndarray  # columns: t, visible, in flight
    effects: Counter  # doc_id -> effects applied
    dead_lettered: list[str]  # doc_ids in the DLQ
    left_in_queue: int
    stats: PoolStats
    service: ProcessingService
    accept: LoadResult | None = None  # when the docs came in over HTTP
    queued: dict[str, int] = field(default_factory=dict)  # doc_id -> receive count, of the
    # messages still in the main queue at the end (0: never received)

    @property
    def ideal_drain(self) -> float:
        """ceil(N / workers) x processing time: the best any schedule can do."""
        return math.ceil(self.n_docs / self.workers) * self.processing_time

    def summary(self) -> str:
        drained = (f"drained in {self.drained_at:.2f} s (ideal {self.ideal_drain:.2f} s)"
                   if self.drained_at is not None else
                   f"NOT drained: {self.left_in_queue} messages left")
        dup = sum(1 for c in self.effects.values() if c > 1)
        return (f"{self.n_docs} docs, {self.workers} workers: {drained}; "
                f"{len(self.completed_at)} acknowledged, {len(self.dead_lettered)} dead-lettered, "
                f"{dup} docs with duplicate effects, {len(self.stats.crashes)} crashes")


def make_documents(n: int, poison: set[int] = frozenset(), prefix: str = "doc") -> list[Document]:
    """``n`` documents named ``doc-0000``...; the indices in ``poison`` are corrupt."""
    docs = []
    for i in range(n):
        content = (CORRUPT_MARKER if i in poison else "") + f"quarterly report {i}"
        docs.append(Document(f"{prefix}-{i:04d}", f"{prefix}-{i:04d}.pdf", content))
    return docs


def run_pipeline(config: PipelineConfig, docs: list[Document], *, processing_time: float,
                 capacity: int = 20, faults: FaultPlan | None = None,
                 arrival_rate: float | None = None, deadline: float | None = None,
                 folder: str | os.PathLike | None = None, via_http: bool = False,
                 sample_interval: float = 0.02) -> RunResult:
    """Run ``docs`` through a fresh queue and ``config.workers`` workers, for real.

    ``arrival_rate`` (documents per second) spaces the sends evenly; None sends them all
    at once (the 2pm burst). ``via_http`` sends them as 500 concurrent HTTP uploads to
    the front door instead (``result.accept`` then holds the accept latencies).
    ``deadline`` (seconds, default 3x the ideal drain time plus 2 s) ends a run that
    does not drain.
    """
    owned = folder is None
    tmp = tempfile.mkdtemp(prefix="mq-run-") if owned else os.fspath(folder)
    db_path = os.path.join(tmp, "pipeline.db")
    dlq = None
    if config.max_receive_count is not None:
        dlq = Queue(db_path, "jobs-dlq", visibility_timeout=0)
    queue = Queue(db_path, "jobs", visibility_timeout=config.visibility_timeout,
                  dead_letter_queue=dlq, max_receive_count=config.max_receive_count)
    store = ResultStore(db_path)
    service = ProcessingService(processing_time, capacity)
    pool = WorkerPool(queue, config.handler, workers=config.workers, service=service,
                      store=store, faults=faults)
    ideal = math.ceil(len(docs) / max(1, min(config.workers, capacity))) * processing_time
    deadline = 3 * ideal + 2.0 if deadline is None else deadline
    sent_at: dict[str, float] = {}
    accept = None
    server = None
    if via_http:  # started before the clock: its start-up is not part of the run
        server = serve(db_path, queue=queue, store=store, processing_time=processing_time,
                       name="pipeline-run")
    t0 = time.time()
    with DepthSampler(queue, sample_interval) as sampler, pool:
        if server is not None:
            try:
                accept = fire_requests(server.url + "/uploads", docs)
            finally:
                server.stop()
            sent_at = dict(accept.accepted_at)  # the server named the jobs
        else:
            for i, doc in enumerate(docs):
                if arrival_rate:
                    time.sleep(max(0.0, t0 + i / arrival_rate - time.time()))
                queue.send(doc.to_json())
                sent_at[doc.doc_id] = time.time()
        drained = wait_until_drained(queue, max(0.0, t0 + deadline - time.time()))
    left = len(queue)
    queued = {Document.from_json(m["body"]).doc_id: int(m["receive_count"]) for m in queue.peek()}
    completed: dict[str, float] = {}
    for at, doc_id in pool.stats.completed:
        completed.setdefault(doc_id, at - t0)
    dead = [Document.from_json(m["body"]).doc_id for m in dlq.peek()] if dlq else []
    effects = store.effects_per_doc()
    depth = np.array([(t - t0, v, f) for t, v, f in sampler.samples], dtype=float).reshape(-1, 3)
    queue.close()
    store.close()
    if owned:
        with contextlib.suppress(OSError):
            for name in os.listdir(tmp):
                os.remove(os.path.join(tmp, name))
            os.rmdir(tmp)
    return RunResult(len(docs), processing_time, config.workers,
                     {k: v - t0 for k, v in sent_at.items()}, completed,
                     None if drained is None else drained - t0, depth, effects, dead, left,
                     pool.stats, service, accept, queued)


def littles_law(run: RunResult) -> dict[str, float]:
    """Check L = lambda W on a run that drained: L from the sampled depth, lambda and W
    from each message's send and delete times, over the interval [0, drain]."""
    if run.drained_at is None or not run.completed_at:
        raise ValueError("Little's law needs a run that drained")
    span = run.drained_at
    t, visible, in_flight = run.depth.T
    inside = t <= span
    area = np.trapezoid(visible[inside] + in_flight[inside], t[inside])
    L = area / span  # mean number of messages in the system
    done = [d for d in run.completed_at if d in run.sent_at]
    lam = len(done) / span  # arrivals per second that also left
    W = float(np.mean([run.completed_at[d] - run.sent_at[d] for d in done]))  # seconds
    return {"L": float(L), "lambda": lam, "W": W, "lambda_W": lam * W,
            "relative_error": abs(L - lam * W) / (lam * W)}


# --- worker processes (crash them with SIGKILL) ---------------------------------------


def spawn_worker_process(db_path: str | os.PathLike, *, queue: str = "jobs",
                         visibility_timeout: float = 1.0, processing_time: float = 0.01,
                         exit_when_empty: bool = False) -> subprocess.Popen:
    """Start ``python -m labsupport.message_queues worker`` processing idempotently."""
    cmd = [sys.executable, "-m", "labsupport.message_queues", "worker", "--db", os.fspath(db_path),
           "--queue", queue, "--visibility-timeout", str(visibility_timeout),
           "--processing-time", str(processing_time)]
    if exit_when_empty:
        cmd.append("--exit-when-empty")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_hard(process: subprocess.Popen) -> None:
    """SIGKILL: no cleanup code runs, no message is deleted or released."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _worker_main(args: argparse.Namespace) -> None:
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


# --- the front door (FastAPI) ---------------------------------------------------------


def create_app(queue: Queue, store: ResultStore, *, processing_time: float = 0.1,
               sync_limit: int = 20, sync_timeout: float = 1.0, sync_max_waiting: int = 200):
    """The upload API.

    - ``POST /uploads`` enqueues the document and answers ``202 Accepted`` with a job id.
    - ``GET /jobs/{job_id}``: queued, processing, done or dead-lettered (404 if unknown).
    - ``POST /process-sync`` processes inline, ``sync_limit`` at a time: a request that
      finds ``sync_max_waiting`` others waiting is rejected at once (503); one that waits
      longer than ``sync_timeout`` seconds for a slot times out (504).
    """
    from fastapi import FastAPI, HTTPException, Response
    from pydantic import BaseModel, Field

    class Upload(BaseModel):
        name: str = Field(min_length=1, max_length=200)
        content: str = Field(max_length=1_000_000)

    app = FastAPI(title="Document uploads (03_message_queues)")
    state = {"waiting": 0}
    slots: dict[str, asyncio.Semaphore] = {}  # created inside the server's event loop

    async def upload(doc: Upload) -> dict[str, str]:
        # The insert takes about 0.1 ms, so it runs on the event loop; a plain def would
        # hand each of 500 requests to a pool of 40 threads, which costs more than the
        # insert. A slow call (a remote database) would belong in that thread pool.
        job_id = uuid.uuid4().hex[:16]
        queue.send(Document(job_id, doc.name, doc.content).to_json())
        return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}

    def job_status(job_id: str) -> dict[str, str]:
        if store.is_processed(job_id):
            return {"job_id": job_id, "status": "done"}
        found = _find_job(queue, job_id)
        if found is not None:
            return {"job_id": job_id, "status": found}
        if queue.dead_letter_queue and _find_job(queue.dead_letter_queue, job_id):
            return {"job_id": job_id, "status": "dead-lettered"}
        raise HTTPException(404, f"unknown job {job_id}")

    async def process_sync(doc: Upload, response: Response) -> dict[str, str]:
        sem = slots.setdefault("sem", asyncio.Semaphore(sync_limit))
        if sem.locked() and state["waiting"] >= sync_max_waiting:
            raise HTTPException(503, "busy: try again later", headers={"Retry-After": "1"})
        state["waiting"] += 1
        try:
            await asyncio.wait_for(sem.acquire(), sync_timeout)
        except TimeoutError:
            raise HTTPException(504, f"no processing slot within {sync_timeout:g} s") from None
        finally:
            state["waiting"] -= 1
        try:
            await asyncio.sleep(processing_time)  # inline processing, holding the slot
        finally:
            sem.release()
        return {"status": "done", "name": doc.name}

    # This module uses postponed annotations (strings); FastAPI resolves strings in the
    # module's globals, where the local Upload model is not, so give it the classes.
    for endpoint in (upload, process_sync):
        endpoint.__annotations__["doc"] = Upload
    process_sync.__annotations__["response"] = Response
    app.post("/uploads", status_code=202)(upload)
    app.get("/jobs/{job_id}")(job_status)
    app.post("/process-sync")(process_sync)
    return app


def _find_job(queue: Queue, job_id: str) -> str | None:
    """Job status from the queue table (the job id is inside the message body)."""
    row = queue.db.conn().execute(
        "SELECT receive_count, visible_at FROM messages WHERE queue = ? AND "
        "json_extract(body, '$.doc_id') = ?", (queue.name, job_id)).fetchone()
    if row is None:
        return None
    return "processing" if row[0] > 0 and row[1] > queue.clock() else "queued"


# The front door runs through labsupport/servers.py (shared with notebooks 01 and 06):
# uvicorn in a background thread on a free loopback port, registered by name.
ServerHandle = servers.ServerHandle
_SERVERS = servers.RUNNING  # name -> running server; a re-run stops the old one


def serve(db_path: str | os.PathLike, *, queue: Queue | None = None,
          store: ResultStore | None = None, processing_time: float = 0.1,
          sync_limit: int = 20, sync_timeout: float = 1.0, sync_max_waiting: int = 200,
          name: str = "front-door") -> ServerHandle:
    """Start the front door on 127.0.0.1 and a free port. Starting a server with the
    same ``name`` again stops the previous one first (a re-run cell is safe)."""
    stop_server(name)
    queue = queue or Queue(db_path, "jobs")
    store = store or ResultStore(db_path)
    app = create_app(queue, store, processing_time=processing_time, sync_limit=sync_limit,
                     sync_timeout=sync_timeout, sync_max_waiting=sync_max_waiting)
    # a deep accept backlog and short keep-alive: 500 clients connect at once
    return servers.serve(app, name, backlog=2048, timeout_keep_alive=5, access_log=False)


def stop_server(name: str = "front-door") -> None:
    servers.stop(name)


def stop_all_servers() -> None:
    servers.stop_all()


# --- load over HTTP -------------------------------------------------------------------


@dataclass
class LoadResult:
    """Outcomes of concurrent HTTP requests. Latencies in seconds."""

    latencies: dict[str, list[float]]  # outcome -> latencies
    accepted_at: dict[str, float]  # job id -> time.time() of the 202 answer
    job_of: dict[str, str]  # document name -> job id
    wall: float  # seconds from the first request to the last answer

    def count(self, outcome: str) -> int:
        return len(self.latencies.get(outcome, []))

    def p99(self, outcome: str | None = None) -> float:
        values = (sum(self.latencies.values(), []) if outcome is None
                  else self.latencies.get(outcome, []))
        return float(np.percentile(values, 99)) if values else float("nan")

    def summary(self) -> str:
        parts = [f"{k}: {len(v)}" for k, v in sorted(self.latencies.items())]
        return f"{', '.join(parts)}; p99 {self.p99() * 1000:.0f} ms; wall {self.wall:.2f} s"


async def http_post_json(host: str, port: int, path: str, payload: dict,
                         timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on its own connection (``Connection: close``); returns the status
    code and the body. Raises TimeoutError after ``timeout`` seconds.

    Why not httpx here: on this course's 2-core machines its client spent seconds of CPU
    managing 500 concurrent connections, in the same process as the server, and that
    time would have been measured as server latency. This is plain HTTP on a socket.
    """
    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            body = json.dumps(payload).encode()
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
            raw = await reader.read()  # the server closes the connection after answering
        finally:
            writer.close()
        status_line, _, rest = raw.partition(b"\r\n")
        _, _, content = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), content

    return await asyncio.wait_for(exchange(), timeout)


def fire_requests(url: str, docs: list[Document], timeout: float = 10.0) -> LoadResult:
    """POST every document to ``url`` at once (one connection each, as 500 users would)
    and classify the answers: ``accepted`` (2xx), ``rejected`` (503 and other errors),
    ``timed_out`` (504, or no answer within ``timeout`` seconds). Runs its own event
    loop in a thread, so it works inside Jupyter, whose loop is already running."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    latencies: dict[str, list[float]] = {}
    accepted_at: dict[str, float] = {}
    job_of: dict[str, str] = {}

    async def one(doc: Document) -> None:
        start = time.perf_counter()
        try:
            status, content = await http_post_json(
                host, port, path, {"name": doc.name, "content": doc.content}, timeout)
            outcome = ("accepted" if 200 <= status < 300 else
                       "timed_out" if status == 504 else "rejected")
            if status == 202:
                job = json.loads(content)["job_id"]
                accepted_at[job] = time.time()
                job_of[doc.name] = job
        except TimeoutError:
            outcome = "timed_out"
        except (OSError, ValueError, IndexError):
            outcome = "rejected"  # connection refused or reset, or a garbled answer
        latencies.setdefault(outcome, []).append(time.perf_counter() - start)

    async def main() -> None:
        await asyncio.gather(*(one(d) for d in docs))

    started = time.perf_counter()
    error: list[BaseException] = []

    def runner() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=runner, name="mq-load")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return LoadResult(latencies, accepted_at, job_of, time.perf_counter() - started)


# --- simulated time: the widget's engine ----------------------------------------------


@dataclass
class SimResult:
    """One simulated run. ``t``, ``visible``, ``in_flight``, ``done`` are step series."""

    t: np.ndarray
    visible: np.ndarray
    in_flight: np.ndarray
    done: np.ndarray
    drained_at: float | None  # seconds; None if not empty by the horizon
    duplicates: int  # extra effects (a doc processed more than once)
    dead_lettered: int
    crashes: int
    ideal: float  # ceil(N / workers) x processing time


def simulate(n_jobs: int = 500, workers: int = 20, processing_time: float = 1.0,
             visibility_timeout: float = 3.0, crash_rate: float = 0.0,
             max_receive_count: int | None = 3, poison: int = 2, seed: int = 0,
             horizon: float | None = None) -> SimResult:
    """The same queue semantics in simulated time (an event simulation, milliseconds).

    All jobs arrive at t = 0. A worker receives the oldest visible message (by send); the job
    takes ``processing_time``; with probability ``crash_rate`` the worker crashes
    halfway (and restarts at once); a poison job fails after 20% of the time. A message
    not deleted reappears ``visibility_timeout`` after its receive; if it was received
    again meanwhile, the first worker's delete is refused (stale receipt handle).
    """
    rng = np.random.default_rng(seed)
    ideal = math.ceil(n_jobs / workers) * processing_time
    horizon = horizon if horizon is not None else 4 * ideal + 10 * visibility_timeout
    visible_at = np.zeros(n_jobs)
    gone = np.zeros(n_jobs, dtype=bool)
    received = np.zeros(n_jobs, dtype=int)
    token = np.zeros(n_jobs, dtype=int)  # bumps on each receive: the receipt handle
    is_poison = np.zeros(n_jobs, dtype=bool)
    is_poison[rng.choice(n_jobs, size=min(poison, n_jobs), replace=False)] = True
    effects = np.zeros(n_jobs, dtype=int)
    # events: (time, order, kind, worker, job, token)
    events: list[tuple[float, int, str, int, int, int]] = []
    order = 0
    for w in range(workers):
        events.append((0.0, order, "free", w, -1, 0))
        order += 1
    heapq.heapify(events)
    series: list[tuple[float, int, int, int]] = []
    dead = crashes = 0
    drained_at = None
    waiting: list[int] = []  # idle workers

    def record(now: float) -> None:
        alive = ~gone
        vis = int(np.sum(alive & (visible_at <= now)))
        series.append((now, vis, int(np.sum(alive)) - vis, int(np.sum(gone)) - dead))

    def push(at: float, kind: str, w: int = -1, job: int = -1, tok: int = 0) -> None:
        nonlocal order
        heapq.heappush(events, (at, order, kind, w, job, tok))
        order += 1

    record(0.0)
    while events:
        now, _, kind, w, job, tok = heapq.heappop(events)
        if now > horizon:
            break
        if kind == "complete":
            if not is_poison[job]:
                effects[job] += 1
                if token[job] == tok and not gone[job]:
                    gone[job] = True  # delete with the latest handle: acknowledged
            kind = "free"
        if kind == "tick":  # a visibility timeout ran out: wake idle workers
            idle, waiting = waiting, []
            for iw in idle:
                push(now, "free", iw)
        elif kind == "free":
            while True:
                candidates = np.where(~gone & (visible_at <= now))[0]
                if len(candidates) == 0:
                    waiting.append(w)
                    break
                j = int(candidates[0])  # the oldest send first, as Queue.receive does
                if max_receive_count is not None and received[j] >= max_receive_count:
                    gone[j] = True  # moved to the DLQ instead of delivered
                    dead += 1
                    continue
                received[j] += 1
                token[j] += 1
                visible_at[j] = now + visibility_timeout
                push(visible_at[j], "tick")
                if is_poison[j]:
                    push(now + 0.2 * processing_time, "free", w)  # fails: no delete
                elif rng.random() < crash_rate:
                    crashes += 1
                    push(now + 0.5 * processing_time, "free", w)  # dies mid-job
                else:
                    push(now + processing_time, "complete", w, j, int(token[j]))
                break
        record(now)
        if gone.all() and drained_at is None:
            drained_at = now
            break
    arr = np.array(series, dtype=float)
    duplicates = int(np.sum(np.maximum(effects - 1, 0)))
    return SimResult(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], drained_at, duplicates,
                     dead, crashes, ideal)


def sim_summary(sim: SimResult) -> str:
    drained = (f"drained at {sim.drained_at:.1f} s ({sim.drained_at / sim.ideal:.2f}x ideal "
               f"{sim.ideal:.1f} s)" if sim.drained_at is not None
               else f"NOT drained by {sim.t[-1]:.0f} s ({int(sim.visible[-1] + sim.in_flight[-1])}"
               " left)")
    return (f"{drained}; {sim.crashes} crashes, {sim.duplicates} duplicate effects, "
            f"{sim.dead_lettered} dead-lettered")


def depth_figure(title: str = "Queue depth over time (simulated)") -> go.Figure:
    """An empty figure with the three traces the widget updates."""
    from labsupport import plots

    fig = plots.figure(title, ("time", "s"), ("messages", None))
    for name in ("visible (waiting)", "in flight (being processed)", "done"):
        fig.add_scatter(x=[], y=[], mode="lines", name=name, line_shape="hv")
    return fig


def update_depth_figure(fig: go.Figure, workers: int = 20, crash_rate: float = 0.0,
                        visibility_timeout: float = 3.0, processing_time: float = 1.0,
                        n_jobs: int = 500, seed: int = 0) -> str:
    """The widget callback: simulate and redraw ``fig`` in place; returns a summary line."""
    sim = simulate(n_jobs, workers, processing_time, visibility_timeout, crash_rate, seed=seed)
    with fig.batch_update():
        for trace, ys in zip(fig.data, (sim.visible, sim.in_flight, sim.done), strict=True):
            trace.x, trace.y = sim.t, ys
        fig.layout.title.text = (f"{n_jobs} jobs, {workers} workers, crash rate {crash_rate:.0%}, "
                                 f"visibility timeout {visibility_timeout:.3g} s")
    return sim_summary(sim)


def real_depth_figure(run: RunResult, title: str | None = None) -> go.Figure:
    """Queue depth sampled during a real :func:`run_pipeline`."""
    from labsupport import plots

    fig = plots.figure(title or f"Real run: {run.n_docs} documents, {run.workers} workers",
                       ("time since first send", "s"), ("messages", None))
    t, visible, in_flight = run.depth.T
    fig.add_scatter(x=t, y=visible, mode="lines", name="visible (waiting)", line_shape="hv")
    fig.add_scatter(x=t, y=in_flight, mode="lines", name="in flight", line_shape="hv")
    if run.drained_at is not None:
        fig.add_vline(x=run.drained_at, line_dash="dot",
                      annotation_text=f"drained {run.drained_at:.2f} s")
    return fig


# --- benchmark (make bench) -----------------------------------------------------------


def _timed_threads(fn: Callable[[int], None], threads: int) -> float:
    """Run ``fn(i)`` in ``threads`` threads; the wall time in seconds."""
    pool = [threading.Thread(target=fn, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return time.perf_counter() - start


def _bench_once(db_path: str, threads: int, n_messages: int) -> dict[str, float]:
    q = Queue(db_path, "bench", visibility_timeout=60)
    per = n_messages // threads
    handles: list[list[str]] = [[] for _ in range(threads)]

    def sender(_: int) -> None:
        for k in range(per):
            q.send({"k": k})
        q.close()

    def receiver(i: int) -> None:
        while len(handles[i]) < per:
            handles[i] += [m.receipt_handle for m in q.receive(1)]
        q.close()

    def deleter(i: int) -> None:
        for h in handles[i]:
            q.delete(h)
        q.close()

    total = per * threads
    return {"threads": threads,
            "send_per_s": total / _timed_threads(sender, threads),
            "receive_per_s": total / _timed_threads(receiver, threads),
            "delete_per_s": total / _timed_threads(deleter, threads)}


def bench(n_messages: int = 2000, worker_counts: tuple[int, ...] = (1, 4)) -> list[dict]:
    """Queue throughput in messages per second: send, receive and delete, one message
    per call, with 1 and 4 threads. A fresh temporary database per row."""
    rows = []
    for threads in worker_counts:
        with tempfile.TemporaryDirectory(prefix="mq-bench-") as tmp:
            rows.append(_bench_once(os.path.join(tmp, "bench.db"), threads, n_messages))
    return rows


def benchmark() -> dict[str, dict]:
    """For ``make bench``: :func:`bench`'s rows keyed by thread count."""
    return {f"{row['threads']} thread(s), messages/s": {k: round(v) for k, v in row.items()
                                                        if k != "threads"} for row in bench()}


# --- the scenario exercise ------------------------------------------------------------

EXERCISE_ID = "03_message_queues"
EXERCISE_PROCESSING_TIME = 0.25  # seconds per document in the exercise (the demos use 0.05 s)


@dataclass(frozen=True)
class Scenario:
    """2pm: 500 users upload at once; the processing service handles 20 at a time."""

    uploads: int = 500
    capacity: int = 20  # concurrent documents the processing service handles
    processing_time: float = EXERCISE_PROCESSING_TIME  # seconds per document (scaled down from minutes)
    crashes: int = 3  # workers that die mid-job, before the effect
    crashes_after_effect: int = 12  # workers that die after the effect is committed, before the delete
    poison: int = 2  # documents that always fail
    accept_p99_bound: float = 2.0  # seconds, for the 202 answer
    drain_tolerance: float = 0.25  # drain within 25% of the ideal
    seed: int = 3

    @property
    def ideal_drain(self) -> float:
        return math.ceil(self.uploads / self.capacity) * self.processing_time

    @property
    def deadline(self) -> float:
        """Seconds the checker lets the pipeline run before it stops waiting for a drain."""
        return (1 + self.drain_tolerance) * self.ideal_drain + 1.0


SCENARIO = Scenario()


def _scenario_docs(sc: Scenario) -> tuple[list[Document], set[str], set[str]]:
    rng = np.random.default_rng(sc.seed)
    # Poison in the first half and crashes in the first three quarters, so a good
    # configuration can finish its retries within the drain bound.
    picks = rng.choice(np.arange(20, sc.uploads // 2), size=sc.poison, replace=False)
    poison = {int(i) for i in picks}
    crash_pool = [i for i in range(20, 3 * sc.uploads // 4) if i not in poison]
    crashes = {int(i) for i in rng.choice(crash_pool, size=sc.crashes, replace=False)}
    docs = make_documents(sc.uploads, poison, prefix="upload")
    return docs, {docs[i].name for i in poison}, {docs[i].name for i in crashes}


def _scenario_faults(sc: Scenario, docs: list[Document], poison: set[str],
                     crashes: set[str]) -> FaultPlan:
    """The injected crashes: ``crashes`` before the effect, and ``sc.crashes_after_effect``
    other documents whose worker dies after the effect is committed and before the
    delete (the first three quarters again, fixed by the seed)."""
    rng = np.random.default_rng([sc.seed, 1])  # its own stream: the draws above stay put
    pool = [d.name for d in docs[20:3 * sc.uploads // 4] if d.name not in poison | crashes]
    after = {str(n) for n in rng.choice(pool, size=sc.crashes_after_effect, replace=False)}
    return FaultPlan(crash_on=set(crashes), crash_after_effect_on=after)


def _effects_check(sc: Scenario, config: PipelineConfig, run: RunResult,
                   good_jobs: list[str], after_effect_jobs: set[str]) -> ex.Check:
    """Row: every good document has exactly one effect."""
    counts = [run.effects.get(j, 0) for j in good_jobs]
    once, missing = counts.count(1), counts.count(0)
    dup = sum(1 for c in counts if c > 1)
    extra = sum(c - 1 for c in counts if c > 1)
    vt, pt = config.visibility_timeout, sc.processing_time
    hints = []
    if dup:
        after = sum(1 for j in after_effect_jobs if run.effects.get(j, 0) > 1)
        if after:
            hints.append(
                f"{after} of the {dup} {'is a document' if after == 1 else 'are documents'} "
                f"whose worker crashed after the effect was "
                "committed and before the delete: the message came back and your handler "
                "applied the effect again. Make the effect idempotent: in one "
                "store.transaction(), record it only when tx.mark_processed(doc.doc_id) "
                "returns True.")
        if vt <= pt:
            hints.append(
                f"Your visibility timeout ({vt:g} s) is not above the processing time "
                f"({pt:g} s): a message reappears while its first worker is still busy, and "
                "a second worker processes it too.")
        elif dup > after:
            hints.append(
                f"{dup - after} were delivered again while their first worker was still busy: "
                f"a visibility timeout of {vt:g} s leaves little margin over the {pt:g} s of "
                "processing, and your handler applied the effect on each delivery.")
    if missing:
        dead = set(run.dead_lettered)
        no_effect = [j for j, c in zip(good_jobs, counts, strict=True) if c == 0]
        not_accepted = sum(1 for j in no_effect if j.startswith("not accepted"))
        queued = [j for j in no_effect if j in run.queued]
        in_dlq = sum(1 for j in no_effect if j in dead)
        if not_accepted:
            hints.append(f"{not_accepted} uploads were not accepted (see that row), so they "
                         "never became jobs.")
        if queued:
            received = sum(1 for j in queued if run.queued[j] > 0)
            details = []
            if received:
                details.append(
                    f"{received} had been received by a worker that crashed or failed, and a "
                    f"message comes back only a full visibility timeout ({vt:g} s) after its "
                    "receive")
            if received < len(queued):
                details.append(
                    f"{len(queued) - received} were never received: the workers were busy "
                    + ("processing documents again whose visibility timeout ran out "
                       "mid-processing" if vt <= pt else "with the documents before them"))
            hints.append(f"{len(queued)} documents were still in the queue, never processed, "
                         f"when the check stopped at {sc.deadline:.1f} s: "
                         + "; ".join(details) + ".")
            if received and vt > sc.deadline - sc.ideal_drain:
                hints.append(f"Keep the visibility timeout above the processing time ({pt:g} s) "
                             "but well inside the drain budget.")
        if in_dlq:
            hints.append(
                f"{in_dlq} good documents went to the dead-letter queue: with "
                f"max_receive_count = {config.max_receive_count}, a crash (or a redelivery) "
                "used up their receives. Allow a retry: 2 or more.")
        if missing > not_accepted + len(queued) + in_dlq:
            hints.append("Some messages were deleted without an effect: let exceptions from "
                         "the service propagate instead of catching them, so the message "
                         "stays in the queue for a retry.")
    return ex.Check(
        "every good document processed exactly once (in effect)",
        once == len(good_jobs) == sc.uploads - sc.poison,
        f"{sc.uploads - sc.poison} documents with exactly 1 effect",
        f"{once} exactly once; {dup} processed more than once ({extra} extra effects); "
        f"{missing} never processed",
        hint=" ".join(hints))


def _dlq_check(sc: Scenario, config: PipelineConfig, run: RunResult,
               poison_names: set[str], job_of: dict[str, str]) -> ex.Check:
    """Row: both poison documents end in the dead-letter queue."""
    poison_jobs = {job_of[n] for n in poison_names if n in job_of}
    in_dlq = poison_jobs & set(run.dead_lettered)
    still = sorted(run.queued[j] for j in poison_jobs if j in run.queued)
    found = f"{len(in_dlq)} in the DLQ ({len(run.dead_lettered)} messages there in all)"
    if still:
        found += (f"; {len(still)} still in the main queue after "
                  f"{' and '.join(map(str, still))} receives")
    mrc, vt = config.max_receive_count, config.visibility_timeout
    if mrc is None:
        hint = ("Without max_receive_count there is no dead-letter queue: a poison document "
                "is retried for ever.")
    elif still:
        needed = mrc * vt  # seconds: one visibility timeout per failed receive
        late = (f", longer than the {sc.deadline:.1f} s the check waits"
                if needed > sc.deadline else "")
        hint = (f"max_receive_count = {mrc} is set, but a poison document moves to the DLQ "
                f"only after {mrc} failed receives, and each failure waits a full visibility "
                f"timeout ({vt:g} s) before the next receive: about {mrc} × {vt:g} s = "
                f"{needed:g} s{late}. Shorten the visibility timeout"
                + (" or lower max_receive_count." if mrc > 5 else "."))
    elif len(poison_jobs) < sc.poison:
        hint = "Some poison uploads were not accepted (see that row), so they never got queued."
    else:
        hint = ("The poison documents' messages were deleted: a handler that catches the "
                "service's exception and returns acknowledges the message. Let the exception "
                "propagate, so the message is retried and then dead-lettered.")
    return ex.Check("both poison documents in the DLQ", len(in_dlq) == sc.poison,
                    f"{sc.poison} in the dead-letter queue", found, hint=hint)


def _drain_check(sc: Scenario, config: PipelineConfig, run: RunResult,
                 poison_left: int) -> ex.Check:
    """Row: the queue empties within the tolerance of the ideal drain time."""
    ideal = sc.ideal_drain
    bound = ideal * (1 + sc.drain_tolerance)
    drained = run.drained_at
    vt, pt = config.visibility_timeout, sc.processing_time
    reasons = []
    if config.workers < sc.capacity:
        own = math.ceil(sc.uploads / config.workers) * pt
        reasons.append(f"With {config.workers} workers the best possible drain is "
                       f"ceil({sc.uploads}/{config.workers}) × {pt:g} s = {own:.2f} s; the "
                       f"service takes {sc.capacity} at a time.")
    if vt <= pt:
        reasons.append(f"The visibility timeout ({vt:g} s) is not above the processing time "
                       f"({pt:g} s): messages come back while still being processed, so "
                       f"workers repeat work ({run.stats.stale_deletes} deletes refused: stale "
                       "receipt handle).")
    if config.max_receive_count is None and poison_left:
        reasons.append("Without max_receive_count the poison documents come back for ever: "
                       "the queue never empties.")
    elif poison_left:
        reasons.append(f"{poison_left} poison document(s) were still being retried: the queue "
                       f"empties only after max_receive_count ({config.max_receive_count}) "
                       f"failed receives, one visibility timeout ({vt:g} s) apart.")
    if vt > pt and (not reasons or vt > bound - ideal):
        reasons.append(f"A crashed worker's message waits a full visibility timeout ({vt:g} s) "
                       "before anyone retries it: keep the timeout above the processing time, "
                       "but not far above.")
    return ex.Check(
        "drain time near the ideal", drained is not None and drained <= bound,
        f"≤ {bound:.2f} s (ideal ceil({sc.uploads}/{sc.capacity}) × {pt:g} s "
        f"= {ideal:.2f} s, +{sc.drain_tolerance:.0%})",
        (f"{drained:.2f} s ({drained / ideal:.2f}× ideal)" if drained is not None else
         f"not drained after {sc.deadline:.1f} s: {run.left_in_queue} messages left, "
         f"{run.stats.stale_deletes} deletes refused (stale receipt handle)"),
        hint=" ".join(reasons))


def _checks(answer: Any, sc: Scenario = SCENARIO) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "my_pipeline")
    if bad:
        return [bad]
    config = answer()
    bad = ex.expect_type(config, PipelineConfig, "my_pipeline()")
    if bad:
        return [bad]
    checks = []
    workers_ok = isinstance(config.workers, int) and 1 <= config.workers <= sc.capacity
    checks.append(ex.Check(
        "workers within capacity", workers_ok, f"1 to {sc.capacity} workers",
        f"{config.workers!r} workers",
        hint=f"The processing service handles {sc.capacity} at a time; more workers only get "
             "'overloaded' errors."))
    try:
        _check_range("visibility_timeout", config.visibility_timeout, 0,
                     SQS_VISIBILITY_TIMEOUT_MAX)
        vt_valid = True
    except (ValueError, TypeError) as exc:
        vt_valid = False
        checks.append(ex.Check("visibility timeout is valid", False, "0 to 43200 s",
                               f"{config.visibility_timeout!r}: {exc}"))
    mrc = config.max_receive_count
    if mrc is not None and not (isinstance(mrc, int) and 1 <= mrc <= 1000):
        checks.append(ex.Check("max_receive_count is valid", False, "None or 1 to 1000",
                               repr(mrc)))
        return checks
    if not vt_valid or not workers_ok:
        return checks
    docs, poison_names, crash_names = _scenario_docs(sc)
    faults = _scenario_faults(sc, docs, poison_names, crash_names)
    run = run_pipeline(config, docs, processing_time=sc.processing_time, capacity=sc.capacity,
                       faults=faults, via_http=True, deadline=sc.deadline)
    acc = run.accept
    assert acc is not None
    p99 = acc.p99("accepted")
    n_acc = acc.count("accepted")
    checks.append(ex.Check(
        "all uploads accepted at once", n_acc == sc.uploads and p99 <= sc.accept_p99_bound,
        f"{sc.uploads} answered 202, p99 ≤ {sc.accept_p99_bound:g} s",
        f"{n_acc} accepted, {acc.count('rejected')} rejected, {acc.count('timed_out')} timed out; "
        f"p99 {p99:.2f} s"))
    job_of = acc.job_of
    # a document whose upload was not accepted has no job: it counts as never processed
    good_jobs = [job_of.get(d.name, f"not accepted: {d.name}") for d in docs
                 if d.name not in poison_names]
    after_effect_jobs = {job_of[n] for n in faults.crash_after_effect_on if n in job_of}
    checks.append(_effects_check(sc, config, run, good_jobs, after_effect_jobs))
    checks.append(_dlq_check(sc, config, run, poison_names, job_of))
    processed = sum(1 for j in good_jobs if j in run.completed_at)
    dead = len(run.dead_lettered)
    lost = sc.uploads - processed - dead - run.left_in_queue
    checks.append(ex.Check(
        "accounting: produced = processed + dead-lettered, none lost",
        processed + dead == sc.uploads and lost == 0 and run.left_in_queue == 0,
        f"{sc.uploads} = {sc.uploads - sc.poison} + {sc.poison}, 0 lost",
        f"{sc.uploads} produced = {processed} processed + {dead} dead-lettered + "
        f"{run.left_in_queue} still queued; {lost} lost"))
    poison_left = sum(1 for n in poison_names if job_of.get(n) in run.queued)
    checks.append(_drain_check(sc, config, run, poison_left))
    return checks


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's answer to the scenario exercise of notebook 03."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labsupport.message_queues",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the front door")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--db", default="jobs.db")
    s.add_argument("--processing-time", type=float, default=0.1)
    w = sub.add_parser("worker", help="run one worker process")
    w.add_argument("--db", required=True)
    w.add_argument("--queue", default="jobs")
    w.add_argument("--visibility-timeout", type=float, default=SQS_VISIBILITY_TIMEOUT_DEFAULT)
    w.add_argument("--processing-time", type=float, default=0.1)
    w.add_argument("--exit-when-empty", action="store_true")
    b = sub.add_parser("bench", help="queue throughput")
    b.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.command == "serve":
        import uvicorn

        db = os.path.abspath(args.db)
        app = create_app(Queue(db, "jobs"), ResultStore(db), processing_time=args.processing_time)
        print(f"front door on http://127.0.0.1:{args.port}  (queue in {db})")
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    elif args.command == "worker":
        _worker_main(args)
    else:
        print(f"queue throughput, {args.messages} messages, SQLite {sqlite3.sqlite_version} WAL")
        for row in bench(args.messages):
            print(f"  {row['threads']} thread(s): send {row['send_per_s']:7.0f}/s  "
                  f"receive {row['receive_per_s']:7.0f}/s  delete {row['delete_per_s']:7.0f}/s")


if __name__ == "__main__":
    main()
