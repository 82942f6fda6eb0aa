"""Backs ``03_message_queues.ipynb``: a durable queue with Amazon SQS semantics, and
processing that stays correct when a message is delivered twice.

- :class:`Queue`: one SQLite file (WAL mode). Receive hides a message for a visibility
  timeout; delete with the latest receipt handle is the acknowledgement; after
  ``max_receive_count`` receives a message moves to a dead-letter queue; retention.
  Safe for many threads and processes at once; it survives a restart.
- :class:`ResultStore` and :func:`process_idempotent`: a processed-ids table in the
  effect's transaction turns at-least-once delivery into exactly-once *effects*.

Workers, the processing service and the HTTP front door are in ``labsupport.services``.
SQS facts come from the Amazon SQS Developer Guide and API reference.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
CREATE TABLE IF NOT EXISTS processed (doc_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL,
                                    at REAL NOT NULL, chars INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS effects_doc ON effects (doc_id);
"""

# One SQLite connection per thread and file (a connection must not be shared between threads)
# and one in-process write lock per file: threads queue on it instead of SQLite's busy
# handler, which sleeps in steps of milliseconds. Other processes wait through busy_timeout.
_local = threading.local()
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


class _Db:
    """A SQLite file with per-thread connections and write transactions."""

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL (survives a process crash) or FULL "
                             "(also survives a power loss)")
        self.path = os.path.realpath(os.fspath(path))
        self.synchronous = synchronous.upper()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with _write_locks_guard:
            self._lock = _write_locks.setdefault(self.path, threading.Lock())
        with self._lock:
            self.conn().executescript(_SCHEMA)  # IF NOT EXISTS: reopening keeps the data

    def conn(self) -> sqlite3.Connection:
        conns = _local.__dict__.setdefault("conns", {})  # this thread's connections
        conn = conns.get(self.path)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")  # milliseconds: wait for other processes
            conns[self.path] = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, across threads and processes."""
        conn = self.conn()
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (other threads' close when the thread ends)."""
        conn = getattr(_local, "conns", {}).pop(self.path, None)
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

    Several queues may share one SQLite file. ``receive`` hands out the oldest visible
    messages first (SQS promises only best-effort order), hides each for
    ``visibility_timeout`` seconds and gives a fresh receipt handle. A message not deleted
    in time becomes visible again (at-least-once delivery); one received
    ``max_receive_count`` times moves to ``dead_letter_queue`` keeping its original
    ``sent_at``, as in SQS, so retention in the DLQ counts from the first send.
    ``clock`` (seconds) may be replaced in tests; processes sharing a file must share it.
    Limits are SQS's; ``check_limits=False`` lifts the retention minimum (compressed time).
    """

    def __init__(self, path: str | os.PathLike, name: str = "jobs", *,
                 visibility_timeout: float = SQS_VISIBILITY_TIMEOUT_DEFAULT,
                 retention_period: float = SQS_RETENTION_DEFAULT,
                 dead_letter_queue: Queue | None = None, max_receive_count: int | None = None,
                 clock: Callable[[], float] = time.time, synchronous: str = "NORMAL",
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
            if type(max_receive_count) is not int:
                raise ValueError("max_receive_count must be an integer")
            _check_range("max_receive_count", max_receive_count, *SQS_MAX_RECEIVE_COUNT_RANGE)
        if dead_letter_queue is not None and dead_letter_queue.name == name:
            raise ValueError("a queue cannot be its own dead-letter queue")
        self.name, self.clock = name, clock
        self.visibility_timeout = float(visibility_timeout)  # seconds
        self.retention_period = float(retention_period)  # seconds, counted from sent_at
        self.dead_letter_queue, self.max_receive_count = dead_letter_queue, max_receive_count
        self.db = _Db(path, synchronous)

    def send(self, body: str | dict, delay_seconds: float = 0.0) -> str:
        """Store one message durably and return its id (SendMessage). When this returns,
        the message is committed: a crash of this process cannot lose it."""
        return self.send_batch([body], delay_seconds)[0]

    def send_batch(self, bodies: list[str | dict], delay_seconds: float = 0.0) -> list[str]:
        """Send several messages in one transaction (SendMessageBatch allows 10)."""
        now = self.clock()
        rows = [(uuid.uuid4().hex, self.name, b if isinstance(b, str) else json.dumps(b), now,
                 now + delay_seconds) for b in bodies]
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
            # a cheap read first: an empty poll takes no write lock
            if self.db.conn().execute(
                    "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                    (self.name, self.clock())).fetchone() is not None:
                got = self._receive_now(max_messages, timeout)
                if got:
                    return got
            if time.monotonic() >= deadline:
                return []
            time.sleep(poll_interval)

    def _receive_now(self, max_messages: int, timeout: float) -> list[Message]:
        now = self.clock()
        out: list[Message] = []
        with self.db.write() as conn:
            # Retention: drop messages older than the retention period, counted from sent_at.
            conn.execute("DELETE FROM messages WHERE queue = ? AND sent_at <= ?",
                         (self.name, now - self.retention_period))
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


# --- documents, the result store, processing ------------------------------------------


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


class TextService(Protocol):
    """The slow downstream service a handler calls (``services.ProcessingService``)."""

    def extract_text(self, doc: Document) -> str: ...


class ResultStore:
    """Where processing leaves its effect (say, the search index), in a SQLite file.

    ``record_effect`` applies the effect on every call: with at-least-once delivery a
    document can be indexed twice. ``transaction()`` gives ``mark_processed`` (False if
    the id is already in the processed-ids table) and ``record_effect`` in one atomic
    transaction, which makes processing idempotent.
    """

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL") -> None:
        self.db = _Db(path, synchronous)

    def record_effect(self, doc_id: str, text: str) -> None:
        """Apply the side effect once more (not idempotent on its own)."""
        with self.transaction() as tx:
            tx.record_effect(doc_id, text)

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
        return Counter(dict(self.db.conn().execute(
            "SELECT doc_id, COUNT(*) FROM effects GROUP BY doc_id").fetchall()))

    def close(self) -> None:
        self.db.close()


class _StoreTx:
    """The operations available inside ``ResultStore.transaction()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def mark_processed(self, doc_id: str) -> bool:
        """Insert into the processed-ids table; False if it was already there."""
        cur = self._conn.execute("INSERT OR IGNORE INTO processed (doc_id, at) VALUES (?, ?)",
                                 (doc_id, time.time()))
        return cur.rowcount == 1

    def record_effect(self, doc_id: str, text: str) -> None:
        self._conn.execute("INSERT INTO effects (doc_id, at, chars) VALUES (?, ?, ?)",
                           (doc_id, time.time(), len(text)))


Handler = Callable[[Document, TextService, ResultStore], None]


def process_naive(doc: Document, service: TextService, store: ResultStore) -> None:
    """Process a document and apply its effect: correct only if delivered exactly once."""
    text = service.extract_text(doc)
    store.record_effect(doc.doc_id, text)


def process_idempotent(doc: Document, service: TextService, store: ResultStore) -> None:
    """Apply the effect at most once per document, however often it is delivered."""
    if store.is_processed(doc.doc_id):  # a redelivery of finished work: skip the slow call
        return
    text = service.extract_text(doc)
    with store.transaction() as tx:  # check and effect commit together, or not at all
        if tx.mark_processed(doc.doc_id):
            tx.record_effect(doc.doc_id, text)
