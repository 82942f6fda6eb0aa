"""Wrong answers for ``03_message_queues.ipynb``: the four steps and the scenario ("500
uploads at 2pm").

Step answers are functions over a SQLite connection, as the notebook's starter cells ask.
Scenario answers are ``my_pipeline() -> services.PipelineConfig``; each runs the whole
scenario on the simulated clock (about 2 s).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable

from labsupport import message_queues as mq
from labsupport.checks import message_queues as checks
from labsupport.services import message_queues as services
from labsupport.solutions import message_queues as key

from . import Exercise, WrongAnswer, step

# --- step 1: receive ----------------------------------------------------------------------


def starter_receive(conn: sqlite3.Connection, queue: str, now: float,
                    visibility_timeout: float) -> mq.Message | None:
    raise NotImplementedError("Step 1: receive one message")


def select_then_update(conn: sqlite3.Connection, queue: str, now: float,
                       visibility_timeout: float) -> mq.Message | None:
    """Reads the row, then hides it in a second statement: two workers read the same row."""
    row = conn.execute("SELECT seq, id, body, receive_count, sent_at FROM messages "
                       "WHERE queue = ? AND visible_at <= ? ORDER BY seq LIMIT 1",
                       (queue, now)).fetchone()
    if row is None:
        return None
    handle = uuid.uuid4().hex
    conn.execute("UPDATE messages SET receive_count = receive_count + 1, receipt_handle = ?, "
                 "received_at = ?, visible_at = ? WHERE seq = ?",
                 (handle, now, now + visibility_timeout, row[0]))
    return mq.Message(row[1], row[2], handle, row[3] + 1, row[4])


def never_hides(conn: sqlite3.Connection, queue: str, now: float,
                visibility_timeout: float) -> mq.Message | None:
    """Hands out the oldest message without hiding it: every worker gets the same one."""
    rows = conn.execute(
        "UPDATE messages SET receive_count = receive_count + 1, receipt_handle = ?, "
        "received_at = ? WHERE seq = (SELECT seq FROM messages WHERE queue = ? AND "
        "visible_at <= ? ORDER BY seq LIMIT 1) "
        "RETURNING id, body, receipt_handle, receive_count, sent_at",
        (uuid.uuid4().hex, now, queue, now)).fetchall()
    return mq.Message(*rows[0]) if rows else None


def ignores_delay(conn: sqlite3.Connection, queue: str, now: float,
                  visibility_timeout: float) -> mq.Message | None:
    """Takes any message that is not in flight, delayed ones too."""
    rows = conn.execute(
        "UPDATE messages SET receive_count = receive_count + 1, receipt_handle = ?, "
        "received_at = ?, visible_at = ? WHERE seq = (SELECT seq FROM messages WHERE "
        "queue = ? AND (receive_count = 0 OR visible_at <= ?) ORDER BY seq LIMIT 1) "
        "RETURNING id, body, receipt_handle, receive_count, sent_at",
        (uuid.uuid4().hex, now, now + visibility_timeout, queue, now)).fetchall()
    return mq.Message(*rows[0]) if rows else None


# --- step 2: delete -----------------------------------------------------------------------


def starter_delete(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    raise NotImplementedError("Step 2: delete by receipt handle")


def delete_by_message(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    """Deletes the message any of its handles belongs to: a stale handle deletes too."""
    row = conn.execute("SELECT message_id FROM receipts WHERE handle = ? AND queue = ?",
                       (receipt_handle, queue)).fetchone()
    if row is None:
        raise mq.ReceiptHandleIsInvalid("unknown handle")
    conn.execute("DELETE FROM messages WHERE id = ?", (row[0],))


def latest_or_error(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    """Fails whenever nothing was deleted: a retried delete and a stale handle raise."""
    if conn.execute("DELETE FROM messages WHERE receipt_handle = ? AND queue = ?",
                    (receipt_handle, queue)).rowcount != 1:
        raise mq.ReceiptHandleIsInvalid("nothing deleted")


def silent_on_unknown(conn: sqlite3.Connection, queue: str, receipt_handle: str) -> None:
    """Deletes by the latest handle and never complains, even about a forged handle."""
    conn.execute("DELETE FROM messages WHERE receipt_handle = ? AND queue = ?",
                 (receipt_handle, queue))


# --- step 3: redrive ----------------------------------------------------------------------


def starter_redrive(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
                    max_receive_count: int, now: float) -> int:
    raise NotImplementedError("Step 3: redrive to the dead-letter queue")


def moves_in_flight(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
                    max_receive_count: int, now: float) -> int:
    """Moves a message its worker still holds: that worker's delete then does nothing."""
    mq.check_redrive_policy(queue, dead_letter_queue, max_receive_count)
    return conn.execute("UPDATE messages SET queue = ?, visible_at = ?, receipt_handle = NULL "
                        "WHERE queue = ? AND receive_count >= ?",
                        (dead_letter_queue, now, queue, max_receive_count)).rowcount


def off_by_one(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
               max_receive_count: int, now: float) -> int:
    """Moves only after max_receive_count + 1 receives (> instead of >=)."""
    mq.check_redrive_policy(queue, dead_letter_queue, max_receive_count)
    return conn.execute("UPDATE messages SET queue = ?, visible_at = ?, receipt_handle = NULL "
                        "WHERE queue = ? AND visible_at <= ? AND receive_count > ?",
                        (dead_letter_queue, now, queue, now, max_receive_count)).rowcount


def no_validation(conn: sqlite3.Connection, queue: str, dead_letter_queue: str,
                  max_receive_count: int, now: float) -> int:
    """Right moves, but accepts max_receive_count = 0 (everything to the DLQ at once)."""
    return conn.execute("UPDATE messages SET queue = ?, visible_at = ?, receipt_handle = NULL "
                        "WHERE queue = ? AND visible_at <= ? AND receive_count >= ?",
                        (dead_letter_queue, now, queue, now, max_receive_count)).rowcount


# --- step 4: apply once -------------------------------------------------------------------


def starter_apply(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    raise NotImplementedError("Step 4: the effect once")


def two_commits(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    """The effect and the mark commit separately: a crash between them doubles the effect."""
    if conn.execute("SELECT 1 FROM processed WHERE doc_id = ?", (doc_id,)).fetchone():
        return False
    conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))
    conn.execute("INSERT OR IGNORE INTO processed (doc_id) VALUES (?)", (doc_id,))
    return True


def check_then_act(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    """One transaction, but a deferred one: the check reads before the write lock is taken."""
    if conn.execute("SELECT 1 FROM processed WHERE doc_id = ?", (doc_id,)).fetchone():
        return False
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO processed (doc_id) VALUES (?)", (doc_id,))
    conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))
    conn.execute("COMMIT")
    return True


def always_applies(conn: sqlite3.Connection, doc_id: str, text: str) -> bool:
    """Atomic, but never asks whether the document was processed."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR IGNORE INTO processed (doc_id) VALUES (?)", (doc_id,))
    conn.execute("INSERT INTO effects (doc_id, text) VALUES (?, ?)", (doc_id, text))
    conn.execute("COMMIT")
    return True


# --- the scenario -------------------------------------------------------------------------

Pipeline = Callable[[], services.PipelineConfig]
Document = services.Document


def starter() -> Pipeline:
    """The notebook's untouched starter cell."""

    def my_worker(queue, service, store) -> None:
        for msg in queue.receive(max_messages=1):
            queue.delete(msg.receipt_handle)           # acknowledge first...
            doc = services.Document.from_json(msg.body)
            text = service.extract_text(doc)            # ...then the slow call
            store.record_effect(doc.doc_id, text)

    def my_pipeline() -> services.PipelineConfig:
        return services.PipelineConfig(workers=20, visibility_timeout=0.1,
                                       max_receive_count=None, worker=my_worker)

    return my_pipeline


def _key_but(**changes) -> Pipeline:
    """The answer key's configuration with some fields changed."""
    return lambda: dataclasses.replace(key.my_pipeline(), **changes)


def delete_first(queue, service, store) -> None:
    for msg in queue.receive(max_messages=1):
        queue.delete(msg.receipt_handle)
        doc = Document.from_json(msg.body)
        store.apply_once(doc.doc_id, service.extract_text(doc))


def mark_first(queue, service, store) -> None:
    for msg in queue.receive(max_messages=1):
        doc = Document.from_json(msg.body)
        with store.transaction() as tx:
            claimed = tx.mark_processed(doc.doc_id)
        if claimed:
            store.record_effect(doc.doc_id, service.extract_text(doc))
        queue.delete(msg.receipt_handle)


def two_transactions(queue, service, store) -> None:
    for msg in queue.receive(max_messages=1):
        doc = Document.from_json(msg.body)
        if not store.is_processed(doc.doc_id):
            store.record_effect(doc.doc_id, service.extract_text(doc))
            with store.transaction() as tx:
                tx.mark_processed(doc.doc_id)
        queue.delete(msg.receipt_handle)


def fake_effect(queue, service, store) -> None:
    """Writes what the service would return without calling it."""
    for msg in queue.receive(max_messages=1):
        doc = Document.from_json(msg.body)
        if doc.corrupt:
            raise services.CorruptDocument(doc.name)
        store.apply_once(doc.doc_id, doc.content.upper())
        queue.delete(msg.receipt_handle)


def swallow_errors(queue, service, store) -> None:
    for msg in queue.receive(max_messages=1):
        try:
            doc = Document.from_json(msg.body)
            store.apply_once(doc.doc_id, service.extract_text(doc))
        except Exception:  # noqa: BLE001, S110 - the mistake this entry is about
            pass
        queue.delete(msg.receipt_handle)


def call_inside_transaction(queue, service, store) -> None:
    for msg in queue.receive(max_messages=1):
        doc = Document.from_json(msg.body)
        with store.transaction() as tx:
            if tx.mark_processed(doc.doc_id):
                tx.record_effect(doc.doc_id, service.extract_text(doc))
        queue.delete(msg.receipt_handle)


EXERCISES = [
    step(checks, 1, lambda: key.receive_one, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_receive, "runs"),
        WrongAnswer("SELECT, then UPDATE", "two workers read the same row before either hides "
                    "it", lambda: select_then_update, "20 workers at once"),
        WrongAnswer("never hides", "visible_at is not moved: the next receive gets the same "
                    "message", lambda: never_hides, "hidden"),
        WrongAnswer("ignores the delay", "a message sent with DelaySeconds is handed out early",
                    lambda: ignores_delay, "next visible"),
    ]),
    step(checks, 2, lambda: key.delete_message, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_delete, "latest"),
        WrongAnswer("delete by message id", "a stale handle deletes the message another "
                    "worker now holds", lambda: delete_by_message, "stale"),
        WrongAnswer("error unless deleted", "a retried delete fails", lambda: latest_or_error,
                    "deleting again"),
        WrongAnswer("silent on a forged handle", "an unknown handle is not reported",
                    lambda: silent_on_unknown, "never issued"),
    ]),
    step(checks, 3, lambda: key.redrive, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_redrive, "runs"),
        WrongAnswer("moves messages in flight", "a worker still holds it", lambda: moves_in_flight,
                    "exactly the messages"),
        WrongAnswer("> instead of >=", "one receive too many before the DLQ", lambda: off_by_one,
                    "exactly the messages"),
        WrongAnswer("no range check", "maxReceiveCount 0 is accepted", lambda: no_validation,
                    "outside 1-1,000"),
    ]),
    step(checks, 4, lambda: key.apply_once, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_apply, "runs"),
        WrongAnswer("two commits", "a crash between the effect and the mark doubles the effect",
                    lambda: two_commits, "crash before each"),
        WrongAnswer("check, then a transaction", "two deliveries both pass the check",
                    lambda: check_then_act, "deliveries of one document"),
        WrongAnswer("never checks", "every delivery applies the effect", lambda: always_applies,
                    "once"),
    ]),
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: key.my_pipeline,
        gallery=[
            WrongAnswer("starter", "deletes first, a 0.1 s timeout under 0.25 s of work, no "
                        "DLQ, a plain effect", starter, "exactly once"),
            WrongAnswer("delete before processing", "a crash mid-call loses the document",
                        lambda: _key_but(worker=delete_first), "exactly once"),
            WrongAnswer("mark processed before the work", "a crash mid-call leaves it marked "
                        "and never done", lambda: _key_but(worker=mark_first), "exactly once"),
            WrongAnswer("effect and mark in two transactions", "a crash between them applies "
                        "the effect twice", lambda: _key_but(worker=two_transactions),
                        "exactly once"),
            WrongAnswer("fake effect", "records the text without calling the service",
                        lambda: _key_but(worker=fake_effect), "real call"),
            WrongAnswer("no dead-letter queue", "the poison documents come back for ever",
                        lambda: _key_but(max_receive_count=None), "poison"),
            WrongAnswer("max_receive_count = 1", "no retry: a crash sends a good document to "
                        "the DLQ, a false alarm", lambda: _key_but(max_receive_count=1),
                        "only they"),
            WrongAnswer("visibility shorter than the work", "0.2 s under 0.25 s of work: "
                        "messages come back mid-work", lambda: _key_but(visibility_timeout=0.2),
                        "twice at once"),
            WrongAnswer("the SQS default visibility timeout", "30 s: a crashed worker's "
                        "document waits 30 s", lambda: _key_but(visibility_timeout=30.0),
                        "drain time"),
            WrongAnswer("swallows exceptions", "the poison message is deleted, never "
                        "dead-lettered", lambda: _key_but(worker=swallow_errors), "poison"),
            WrongAnswer("service call inside a transaction", "holds the write lock for the "
                        "whole call", lambda: _key_but(worker=call_inside_transaction),
                        "exactly once"),
            WrongAnswer("more workers than the service takes", "50 against a capacity of 20",
                        lambda: _key_but(workers=50), "workers within capacity"),
        ],
    ),
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz", check=lambda a: checks.check_quiz(a),
        answer_key=lambda: key.QUIZ_ANSWERS,
        gallery=[
            WrongAnswer("stale delete fails", "believes SQS refuses an old handle",
                        lambda: {**key.QUIZ_ANSWERS, "stale-delete": 0}, "stale-delete"),
            WrongAnswer("redrive after 1.05 s", "counts the failure time, not the timeout",
                        lambda: {**key.QUIZ_ANSWERS, "redrive-time": 1.05}, "redrive-time"),
        ],
    ),
]
