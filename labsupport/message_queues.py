"""Backs ``03_message_queues.ipynb``: a durable queue with Amazon SQS semantics, and an
effect that is applied once however often a message is delivered.

The four steps you write in the notebook are the functions of the same name here, each
over a SQLite connection:

1. :func:`receive_one`: one atomic statement hides a message and hands out a new receipt
   handle;
2. :func:`delete_message`: delete by receipt handle, with SQS's answers for a stale, a
   repeated and an unknown handle;
3. :func:`redrive`: a message received ``max_receive_count`` times moves to the
   dead-letter queue;
4. :func:`apply_once`: the effect and the processed id in one transaction.

:class:`Queue` puts 1-3 behind SQS's API and limits. The documents, the result store
(where step 4 runs) and the workers are in ``labsupport.services.message_queues``.
SQS facts: the SQS API reference and Developer Guide, as of 2025-09 (the botocore model).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labsupport.sqlite_db import Database

# --- Amazon SQS limits (API reference, SetQueueAttributes / SendMessage / ReceiveMessage) ----
SQS_VISIBILITY_TIMEOUT_DEFAULT = 30.0  # seconds
SQS_VISIBILITY_TIMEOUT_MAX = 12 * 3600.0  # seconds, counted from the receive: extending
# a message's timeout never takes it past 12 h after the ReceiveMessage
SQS_RETENTION_DEFAULT = 4 * 24 * 3600.0  # seconds (4 days)
SQS_RETENTION_MIN = 60.0  # seconds (1 minute)
SQS_RETENTION_MAX = 14 * 24 * 3600.0  # seconds (14 days)
SQS_MAX_RECEIVE_COUNT_RANGE = (1, 1000)  # the redrive policy's maxReceiveCount (default 10)
SQS_LONG_POLL_MAX = 20.0  # seconds, ReceiveMessage WaitTimeSeconds
SQS_BATCH_MAX = 10  # messages per ReceiveMessage or SendMessageBatch
SQS_DELAY_MAX = 900.0  # seconds, DelaySeconds (15 minutes)
SQS_MESSAGE_MAX_BYTES = 1_048_576  # 1 MiB of UTF-8 bytes since August 2025 (256 KiB before)
# The characters SQS accepts in a body (the XML 1.0 set); anything else: InvalidMessageContents
_ALLOWED = re.compile("[\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


class SQSError(ValueError):
    """An error SQS would answer with; ``code`` is SQS's error name."""
    code = "SQSError"

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


class InvalidMessageContents(SQSError):  # an empty body, a bad character, over 1 MiB
    code = "InvalidMessageContents"


class ReceiptHandleIsInvalid(SQSError):  # a handle never issued for this queue
    code = "ReceiptHandleIsInvalid"


class MessageNotInflight(SQSError):  # change visibility of a message not in flight
    code = "MessageNotInflight"


class InvalidParameterValue(SQSError):  # a request parameter out of range (HTTP 400)
    code = "InvalidParameterValue"


class InvalidAttributeValue(SQSError):  # a queue attribute out of range
    code = "InvalidAttributeValue"


def check_range(name: str, value: Any, low: float, high: float,
                error: type[SQSError] = InvalidParameterValue) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise error(f"{name} must be between {low:g} and {high:g}; got {value!r}")


def validate_body(body: Any) -> None:
    """SendMessage's rules for a body: a non-empty str of allowed characters, at most
    1 MiB once encoded as UTF-8 (a character can take up to 4 bytes)."""
    if type(body) is not str or not body:
        raise InvalidMessageContents("the body must be a non-empty string")
    if not _ALLOWED.fullmatch(body):
        bad = next(c for c in body if not _ALLOWED.fullmatch(c))
        raise InvalidMessageContents(f"character U+{ord(bad):04X} is outside the allowed set")
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > SQS_MESSAGE_MAX_BYTES:
        raise InvalidMessageContents(f"{size:,} bytes; the maximum is {SQS_MESSAGE_MAX_BYTES:,}")


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    id             TEXT NOT NULL UNIQUE,
    queue          TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        REAL NOT NULL,     -- original enqueue time, kept when moved to a DLQ
    visible_at     REAL NOT NULL,     -- receivable when visible_at <= now
    receive_count  INTEGER NOT NULL DEFAULT 0,
    receipt_handle TEXT UNIQUE,       -- the latest receive's handle; NULL before the first
    received_at    REAL               -- time of the latest receive (for the 12-hour cap)
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);
-- Every receipt handle ever handed out, so that delete can tell a stale one from a forged one.
CREATE TABLE IF NOT EXISTS receipts (handle TEXT PRIMARY KEY, message_id TEXT NOT NULL,
                                     queue TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS receipt_issued AFTER UPDATE OF receipt_handle ON messages
WHEN NEW.receipt_handle IS NOT NULL BEGIN
    INSERT OR IGNORE INTO receipts VALUES (NEW.receipt_handle, NEW.id, NEW.queue);
END;
CREATE TABLE IF NOT EXISTS processed (doc_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS effects (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                    doc_id TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS effects_doc ON effects (doc_id);
"""


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


# --- the four steps, over a connection ---------------------------------------------------


def receive_one(conn: sqlite3.Connection, queue: str, now: float,
                visibility_timeout: float) -> Message | None:
    """Step 1: the oldest visible message of ``queue``, hidden until ``now +
    visibility_timeout`` under a new receipt handle; None if nothing is visible. One
    statement, so two workers can never take the same message."""
    rows = conn.execute(
        "UPDATE messages SET receive_count = receive_count + 1, receipt_handle = ?, "
        "received_at = ?, visible_at = ? WHERE seq = (SELECT seq FROM messages "
        "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT 1) "
        "RETURNING id, body, receipt_handle, receive_count, sent_at",
        (uuid.uuid4().hex, now, now + visibility_timeout, queue, now)).fetchall()
    return Message(*rows[0]) if rows else None  # fetchall: the statement ends, the lock goes


def check_issued(conn: sqlite3.Connection, queue: str, receipt_handle: Any) -> None:
    """Raise :class:`ReceiptHandleIsInvalid` unless ``receipt_handle`` was issued for
    ``queue`` (the ``receipts`` table, filled by a trigger on every receive)."""
    if type(receipt_handle) is not str or not conn.execute(
            "SELECT 1 FROM receipts WHERE handle = ? AND queue = ?",
            (receipt_handle, queue)).fetchone():
        raise ReceiptHandleIsInvalid(f"the receipt handle {receipt_handle!r:.40} is not "
                                     f"valid for queue {queue!r}")


def delete_message(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    """Step 2: DeleteMessage. The latest handle deletes; an older handle of the message
    succeeds and deletes nothing (SQS: "the request will succeed, but the message might
    not be deleted"); deleting again succeeds; a handle never issued for ``queue`` raises
    :class:`ReceiptHandleIsInvalid`."""
    check_issued(conn, queue, receipt_handle)
    conn.execute("DELETE FROM messages WHERE receipt_handle = ? AND queue = ?",
                 (receipt_handle, queue))


def check_redrive_policy(queue: str, dead_letter_queue: str, max_receive_count: Any) -> None:
    """SQS's rules for a redrive policy: an int maxReceiveCount from 1 to 1,000 and a
    dead-letter queue other than the queue itself."""
    if type(max_receive_count) is not int:
        raise InvalidAttributeValue(f"maxReceiveCount must be an integer; got {max_receive_count!r}")
    check_range("maxReceiveCount", max_receive_count, *SQS_MAX_RECEIVE_COUNT_RANGE,
                error=InvalidAttributeValue)
    if dead_letter_queue == queue:
        raise InvalidAttributeValue("a queue cannot be its own dead-letter queue")


def redrive(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
            max_receive_count: int, now: float) -> int:
    """Step 3: move every message of ``queue`` that is visible again after
    ``max_receive_count`` receives to ``dead_letter_queue``, receivable there at once,
    keeping its id, body and ``sent_at``. Returns how many moved."""
    check_redrive_policy(queue, dead_letter_queue, max_receive_count)
    return conn.execute(
        "UPDATE messages SET queue = ?, visible_at = ?, receipt_handle = NULL "
        "WHERE queue = ? AND visible_at <= ? AND receive_count >= ?",
        (dead_letter_queue, now, queue, now, max_receive_count)).rowcount


def apply_once(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    """Step 4: record ``doc_id`` as processed and its effect, in one transaction, unless
    it was processed before. True if the effect was applied now."""
    conn.execute("BEGIN IMMEDIATE")  # take the write lock first: no one can slip in between
    try:
        first = conn.execute("INSERT OR IGNORE INTO processed (doc_id) VALUES (?)",
                             (doc_id,)).rowcount == 1
        if first:
            conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return first


# --- the queue ---------------------------------------------------------------------------


class Queue:
    """A durable queue with the semantics of an Amazon SQS standard queue.

    Several queues may share one SQLite file. ``receive`` hands out the oldest visible
    messages first (SQS promises only best-effort order). A redrive policy is
    ``dead_letter_queue`` with ``max_receive_count``. ``clock`` and ``sleep`` (seconds)
    may be replaced by a simulated clock; processes sharing a file must share the clock.
    ``check_limits=False`` lifts the retention minimum (for compressed time).
    """

    def __init__(self, path: str | os.PathLike, name: str = "jobs", *,
                 visibility_timeout: float = SQS_VISIBILITY_TIMEOUT_DEFAULT,
                 retention_period: float = SQS_RETENTION_DEFAULT,
                 dead_letter_queue: Queue | None = None, max_receive_count: int | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep,
                 synchronous: str = "NORMAL", check_limits: bool = True) -> None:
        check_range("VisibilityTimeout", visibility_timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX,
                    InvalidAttributeValue)
        low = SQS_RETENTION_MIN if check_limits else 1e-9
        check_range("MessageRetentionPeriod", retention_period, low, SQS_RETENTION_MAX,
                    InvalidAttributeValue)
        if (dead_letter_queue is None) != (max_receive_count is None):
            raise InvalidAttributeValue("a redrive policy needs both dead_letter_queue and "
                                        "max_receive_count")
        if dead_letter_queue is not None:
            check_redrive_policy(name, dead_letter_queue.name, max_receive_count)
        self.name, self.clock, self.sleep = name, clock, sleep
        self.visibility_timeout = float(visibility_timeout)  # seconds
        self.retention_period = float(retention_period)  # seconds, counted from sent_at
        self.dead_letter_queue, self.max_receive_count = dead_letter_queue, max_receive_count
        self.db = Database(path, SCHEMA, synchronous)
        if dead_letter_queue is not None and dead_letter_queue.db.path != self.db.path:
            raise InvalidAttributeValue("the dead-letter queue must live in the same file: "
                                        "a redrive moves the row, it cannot copy it elsewhere")

    def send(self, body: str | dict, delay_seconds: float = 0.0) -> str:
        """SendMessage: once this returns its id, the message survives a crash."""
        return self.send_batch([body], delay_seconds)[0]

    def send_batch(self, bodies: list[str | dict], delay_seconds: float = 0.0) -> list[str]:
        """Send up to 10 messages in one transaction (SendMessageBatch)."""
        check_range("number of entries", len(bodies), 1, SQS_BATCH_MAX)
        check_range("DelaySeconds", delay_seconds, 0, SQS_DELAY_MAX)
        texts = [b if isinstance(b, str) else json.dumps(b) for b in bodies]
        for text in texts:
            validate_body(text)
        total = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        if total > SQS_MESSAGE_MAX_BYTES:
            raise InvalidMessageContents(f"the batch holds {total:,} bytes; the maximum is "
                                         f"{SQS_MESSAGE_MAX_BYTES:,}")
        now = self.clock()
        rows = [(uuid.uuid4().hex, self.name, t, now, now + delay_seconds) for t in texts]
        with self.db.write() as conn:
            conn.executemany("INSERT INTO messages (id, queue, body, sent_at, visible_at) "
                             "VALUES (?, ?, ?, ?, ?)", rows)
        return [r[0] for r in rows]

    def receive(self, max_messages: int = 1, visibility_timeout: float | None = None,
                wait_time_seconds: float = 0.0, poll_interval: float = 0.005) -> list[Message]:
        """ReceiveMessage: up to ``max_messages`` visible messages, each hidden for the
        visibility timeout under a new receipt handle. Messages past the retention
        period are dropped and, with a redrive policy, messages received
        ``max_receive_count`` times move to the dead-letter queue first.
        ``wait_time_seconds > 0`` long-polls: wait up to that long for a message."""
        check_range("MaxNumberOfMessages", max_messages, 1, SQS_BATCH_MAX)
        check_range("WaitTimeSeconds", wait_time_seconds, 0, SQS_LONG_POLL_MAX)
        timeout = self.visibility_timeout if visibility_timeout is None else visibility_timeout
        check_range("VisibilityTimeout", timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX)
        deadline = self.clock() + wait_time_seconds
        while True:
            # a cheap read first: an empty poll takes no write lock
            if self.db.conn().execute(
                    "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                    (self.name, self.clock())).fetchone() is not None:
                got = self._receive_now(max_messages, timeout)
                if got:
                    return got
            if self.clock() >= deadline:
                return []
            self.sleep(poll_interval)

    def _receive_now(self, max_messages: int, timeout: float) -> list[Message]:
        now = self.clock()
        out: list[Message] = []
        with self.db.write() as conn:
            conn.execute("DELETE FROM messages WHERE queue = ? AND sent_at <= ?",
                         (self.name, now - self.retention_period))
            if self.dead_letter_queue is not None:
                redrive(conn, self.name, self.dead_letter_queue.name, self.max_receive_count,
                        now)
            while len(out) < max_messages and (msg := receive_one(conn, self.name, now,
                                                                   timeout)):
                out.append(msg)
        return out

    def delete(self, receipt_handle: str) -> None:
        """DeleteMessage (see :func:`delete_message`): returns nothing, as in SQS."""
        with self.db.write() as conn:
            delete_message(conn, self.name, receipt_handle)

    def change_visibility(self, receipt_handle: str, visibility_timeout: float) -> None:
        """ChangeMessageVisibility: hide the message for ``visibility_timeout`` seconds
        from now (extend a long job, or 0 to release it at once), never past 12 hours
        after its receive."""
        check_range("VisibilityTimeout", visibility_timeout, 0, SQS_VISIBILITY_TIMEOUT_MAX)
        now = self.clock()
        with self.db.write() as conn:
            check_issued(conn, self.name, receipt_handle)
            row = conn.execute("SELECT received_at, visible_at FROM messages "
                               "WHERE receipt_handle = ? AND queue = ?",
                               (receipt_handle, self.name)).fetchone()
            if row is None or row[1] <= now:
                raise MessageNotInflight("the message is not in flight under this handle")
            if now + visibility_timeout > row[0] + SQS_VISIBILITY_TIMEOUT_MAX:
                raise InvalidParameterValue("the visibility timeout would end more than 12 "
                                            "hours after the message was received")
            conn.execute("UPDATE messages SET visible_at = ? WHERE receipt_handle = ?",
                         (now + visibility_timeout, receipt_handle))

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

    def __len__(self) -> int:  # messages visible, in flight or delayed
        return sum(self.depth().values())

    def peek(self) -> list[dict[str, Any]]:
        """All messages of this queue, oldest first, without receiving them."""
        now = self.clock()
        rows = self.db.conn().execute(
            "SELECT id, body, receive_count, visible_at, sent_at FROM messages "
            "WHERE queue = ? ORDER BY seq", (self.name,)).fetchall()
        return [{"id": r[0], "body": r[1], "receive_count": r[2],
                 "visible_in_s": round(max(0.0, r[3] - now), 3), "age_s": round(now - r[4], 3)}
                for r in rows]

    def close(self) -> None:
        self.db.close()
