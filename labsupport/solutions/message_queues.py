"""Answer key for ``03_message_queues.ipynb``: the four steps, the scenario and the quiz.

500 uploads at 2pm, a processing service that handles 20 at a time: a queue in front of
it, drained by a pool whose work survives crashes and redeliveries.
"""

from __future__ import annotations

import sqlite3
import uuid

from labsupport import message_queues as mq
from labsupport.checks import message_queues as checks
from labsupport.services import message_queues as services

# --- Step 1: receive --------------------------------------------------------------------

def receive_one(conn: sqlite3.Connection, queue: str, now: float,
                visibility_timeout: float) -> mq.Message | None:
    """One statement picks the oldest visible message and hides it under a new handle:
    no other worker can read the row in between."""
    rows = conn.execute(
        "UPDATE messages SET receive_count = receive_count + 1, receipt_handle = ?, "
        "received_at = ?, visible_at = ? WHERE seq = (SELECT seq FROM messages "
        "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT 1) "
        "RETURNING id, body, receipt_handle, receive_count, sent_at",
        (uuid.uuid4().hex, now, now + visibility_timeout, queue, now)).fetchall()
    return mq.Message(*rows[0]) if rows else None


# --- Step 2: delete ---------------------------------------------------------------------

def delete_message(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    """The latest handle deletes; an older one of this queue succeeds and deletes nothing;
    one never issued for this queue is invalid."""
    issued = type(receipt_handle) is str and conn.execute(
        "SELECT 1 FROM receipts WHERE handle = ? AND queue = ?",
        (receipt_handle, queue)).fetchone()
    if not issued:
        raise mq.ReceiptHandleIsInvalid(f"{receipt_handle!r} was not issued for {queue!r}")
    conn.execute("DELETE FROM messages WHERE receipt_handle = ? AND queue = ?",
                 (receipt_handle, queue))


# --- Step 3: redrive ----------------------------------------------------------------------

def redrive(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
            max_receive_count: int, now: float) -> int:
    """Move what was received max_receive_count times and is visible again to the DLQ."""
    mq.check_redrive_policy(queue, dead_letter_queue, max_receive_count)
    return conn.execute(
        "UPDATE messages SET queue = ?, visible_at = ?, receipt_handle = NULL "
        "WHERE queue = ? AND visible_at <= ? AND receive_count >= ?",
        (dead_letter_queue, now, queue, now, max_receive_count)).rowcount


# --- Step 4: the effect once ----------------------------------------------------------------

def apply_once(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    """The processed id and the effect commit together; the primary key decides who wins."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        first = conn.execute("INSERT OR IGNORE INTO processed (doc_id) VALUES (?)",
                             (doc_id,)).rowcount == 1
        if first:
            conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))
        conn.execute("COMMIT")
        return first
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --- The scenario: 2pm, 500 uploads -------------------------------------------------------

def process_upload(queue: mq.Queue, service: services.ProcessingService,
                   store: services.ResultStore) -> None:
    """One turn: receive, do the work unless it is done, apply the effect once, and only
    then delete. An exception (a corrupt document) skips the delete: the message comes
    back, and after max_receive_count receives it moves to the dead-letter queue."""
    for msg in queue.receive(max_messages=1):
        doc = services.Document.from_json(msg.body)
        if not store.is_processed(doc.doc_id):  # a redelivery of finished work: no new call
            text = service.extract_text(doc)  # outside any transaction: it takes 0.25 s
            store.apply_once(doc.doc_id, text)
        queue.delete(msg.receipt_handle)  # last: a crash before it only means a redelivery


def my_pipeline() -> services.PipelineConfig:
    return services.PipelineConfig(
        workers=checks.SCENARIO.capacity,  # 20: all the service takes, no more
        # Above the processing time with room to spare, but short: a crashed worker's
        # document waits this long before anyone retries it.
        visibility_timeout=2.5 * checks.SCENARIO.processing_time,
        max_receive_count=3,  # three tries, then the dead-letter queue
        worker=process_upload,
    )


# --- The review quiz -----------------------------------------------------------------------

QUIZ_ANSWERS = {"stale-delete": 1, "visibility": 2, "redrive-time": 1.5, "exactly-once": 2,
                "little": 1}
