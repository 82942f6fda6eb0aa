"""The four "Your turn" step checks of ``03_message_queues.ipynb``.

Each runs the learner's function on a SQLite file of its own (``mq.SCHEMA``), on inputs
the notebook never shows, and reads the verdict from the table afterwards:

1. ``receive_one``: the oldest visible message, hidden under a new handle; 20 threads
   released together never get the same message (counts, never timing);
2. ``delete_message``: SQS's answers for the latest, a stale, a repeated, an unknown
   and another queue's receipt handle;
3. ``redrive``: exactly the messages received ``max_receive_count`` times and visible
   again move, keeping what they carry; SQS's range for ``maxReceiveCount``;
4. ``apply_once``: one effect however often, with a failure injected before each of its
   statements in turn and 20 threads on one document.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from labsupport import exercises as ex
from labsupport import message_queues as mq
from labsupport.checks.sqlite_faults import FailingAt, InjectedFailure, connect, race

THREADS = 20  # workers released together
Q, DLQ, OTHER = "uploads", "uploads-dlq", "billing"  # queue names the notebook never uses


def _fresh(folder: str, name: str) -> Path:
    path = Path(folder) / f"{name}.sqlite"
    with closing(connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(mq.SCHEMA)
    return path


def _put(path: Path, queue: str, message_id: str, sent_at: float, *, visible_at: float | None = None,
         receive_count: int = 0) -> None:
    """A message as SendMessage (and earlier receives) would have left it."""
    with closing(connect(path)) as db:
        db.execute("INSERT INTO messages (id, queue, body, sent_at, visible_at, receive_count) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (message_id, queue, f'{{"doc": "{message_id}", "note": "café ✓"}}', sent_at,
                    sent_at if visible_at is None else visible_at, receive_count))


def _row(path: Path, message_id: str) -> dict[str, Any] | None:
    with closing(connect(path)) as db:
        row = db.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else dict(row)


def _call(fn: Callable[..., Any], path: Path, *args: Any) -> tuple[Any, bool]:
    """``fn(connection, *args)`` on a connection of its own; (result, transaction left open)."""
    db = connect(path)
    try:
        got = fn(db, *args)
        return got, db.in_transaction
    finally:
        db.close()


def _open_tx(open_tx: bool) -> str:
    return "; a transaction was left open" if open_tx else ""


OPEN_TX_HINT = ("COMMIT (or ROLLBACK) before you return: an open transaction holds the write "
                "lock and every other worker waits.")


# --- Step 1: receive ------------------------------------------------------------------

def _describe(msg: Any) -> str:
    if isinstance(msg, mq.Message):
        return f"{msg.id} (receive_count {msg.receive_count!r}, handle {msg.receipt_handle!r:.14})"
    return f"{msg!r:.60}"


def _receive_rows(fn: Callable[..., Any], folder: str) -> Iterator[ex.Check]:
    path = _fresh(folder, "receive")
    _put(path, OTHER, "o-1", 0.0)
    got, open_tx = _call(fn, path, Q, 10.0, 30.0)
    yield ex.Check("an empty queue gives None", got is None and not open_tx, "None",
                   _describe(got) + _open_tx(open_tx),
                   hint=OPEN_TX_HINT if open_tx else f"Only messages of the queue asked for "
                   f"count: {OTHER!r} has one, {Q!r} has none.")
    _put(path, Q, "m-1", 1.0)
    _put(path, Q, "m-2", 2.0, visible_at=900.0)  # sent with a delay: not visible before 900
    _put(path, Q, "m-3", 3.0)
    _put(path, Q, "m-4", 4.0)
    first, open_tx = _call(fn, path, Q, 10.0, 30.0)
    ok = (isinstance(first, mq.Message) and first.id == "m-1" and first.receive_count == 1
          and first.sent_at == 1.0 and first.body == _row(path, "m-1")["body"]
          and type(first.receipt_handle) is str and len(first.receipt_handle) >= 16
          and not open_tx)
    yield ex.Check("the oldest visible message, as an mq.Message", ok,
                   "m-1, receive_count 1, its body and sent_at, a handle of 16+ characters",
                   _describe(first) + _open_tx(open_tx),
                   hint=OPEN_TX_HINT if open_tx else "Return mq.Message(id, body, "
                   "receipt_handle, receive_count, sent_at) of the row with the smallest seq "
                   "among this queue's messages with visible_at <= now. Make the handle "
                   "uuid.uuid4().hex: unguessable, new on every receive.")
    if not ok:
        return
    row = _row(path, "m-1")
    want = {"visible_at": 40.0, "receipt_handle": first.receipt_handle, "receive_count": 1,
            "received_at": 10.0}
    found = {k: row[k] for k in want}
    yield ex.Check("the row is hidden under the new handle", found == want,
                   f"{want}", f"{found}", hint="In the same UPDATE: visible_at = now + "
                   "visibility_timeout, receipt_handle = the new handle, receive_count + 1, "
                   "received_at = now.")
    second, _ = _call(fn, path, Q, 10.0, 60.0)  # hidden until 70
    yield ex.Check("a second receive gets the next visible message",
                   isinstance(second, mq.Message) and second.id == "m-3", "m-3 (m-1 is hidden, "
                   "m-2 is delayed until 900)", _describe(second),
                   hint="Select only rows with visible_at <= now, the oldest (smallest seq) first.")
    again, _ = _call(fn, path, Q, 40.0, 30.0)
    ok = (isinstance(again, mq.Message) and again.id == "m-1" and again.receive_count == 2
          and again.receipt_handle != first.receipt_handle)
    yield ex.Check("after the timeout it comes back, under a new handle", ok,
                   "m-1 at now = 40 (10 + 30), receive_count 2, a different handle",
                   _describe(again), hint="A message is visible again when visible_at <= now; "
                   "each receive hands out a new receipt handle.")
    seen = []
    for _ in range(8):
        msg, _ = _call(fn, path, Q, 41.0, 30.0)
        if msg is None:
            break
        seen.append(getattr(msg, "id", repr(msg)))
    yield ex.Check("never another queue's or a delayed message", seen == ["m-4"],
                   "then m-4 only, then None", f"{seen} then None" if len(seen) < 8 else
                   f"{seen} and more", hint=f"Filter on queue = ? and visible_at <= ?: "
                   f"{OTHER!r} and the delayed m-2 must stay put.")


def _race_rows(fn: Callable[..., Any], folder: str) -> Iterator[ex.Check]:
    for messages in (THREADS, 5):
        path = _fresh(folder, f"race-{messages}")
        for i in range(messages):
            _put(path, Q, f"r-{i:02d}", float(i))
        got = race(lambda db: fn(db, Q, 100.0, 30.0), path, THREADS)
        ids = [m.id for m in got if isinstance(m, mq.Message)]
        nones = sum(1 for m in got if m is None)
        odd = [m for m in got if m is not None and not isinstance(m, mq.Message)]
        ok = sorted(ids) == [f"r-{i:02d}" for i in range(messages)] and not odd
        twice = len(ids) - len(set(ids))
        yield ex.Check(f"{THREADS} workers at once, {messages} messages", ok,
                       f"each message to exactly one worker, {THREADS - messages} None",
                       f"{len(set(ids))} distinct messages, {twice} handed out twice, "
                       f"{nones} None" + (f"; {odd[0]!r:.80}" if odd else ""),
                       hint="A SELECT and then an UPDATE lets two workers read the same row "
                       "before either hides it. Do it in one statement: UPDATE … WHERE seq = "
                       "(SELECT seq … LIMIT 1) RETURNING …, then fetchall().")


def step_1_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your receive_one"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="mq-step1-") as tmp:
        yield from ex.rows_or_raised(lambda: _receive_rows(fn, tmp), "receive_one runs",
                                     f"queue {Q!r} with 4 messages, one delayed")
        yield from ex.rows_or_raised(lambda: _race_rows(fn, tmp), "receive_one runs in threads",
                                     f"{THREADS} threads released together")


# --- Step 2: delete -------------------------------------------------------------------

def _receive(path: Path, queue: str, now: float) -> mq.Message:
    """The module's receive, with a 30 s visibility timeout."""
    with closing(connect(path)) as db:
        msg = mq.receive_one(db, queue, now, 30.0)
    assert msg is not None
    return msg


def _deleting(fn: Callable[..., Any], path: Path, queue: str, handle: Any) -> str:
    """'' if the delete succeeded, else the exception's class name and message."""
    try:
        _, open_tx = _call(fn, path, queue, handle)
    except Exception as exc:  # noqa: BLE001 - an error is what some rows expect
        return f"{type(exc).__name__}: {exc}"
    return "left a transaction open" if open_tx else ""


def _is_invalid(fn: Callable[..., Any], path: Path, queue: str, handle: Any) -> tuple[bool, str]:
    try:
        _call(fn, path, queue, handle)
    except mq.ReceiptHandleIsInvalid:
        return True, "ReceiptHandleIsInvalid"
    except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
        return False, f"{type(exc).__name__}: {exc}"
    return False, "no error"


def _delete_rows(fn: Callable[..., Any], folder: str) -> Iterator[ex.Check]:
    path = _fresh(folder, "delete")
    for i in range(3):
        _put(path, Q, f"d-{i}", float(i))
    _put(path, OTHER, "o-1", 0.0)
    msg = _receive(path, Q, 10.0)
    error = _deleting(fn, path, Q, msg.receipt_handle)
    left = [r for r in ("d-0", "d-1", "d-2") if _row(path, r)]
    yield ex.Check("the latest handle deletes that message only", not error and left == ["d-1", "d-2"],
                   "d-0 gone; d-1 and d-2 still queued", error or f"left: {left}",
                   hint="DELETE FROM messages WHERE receipt_handle = ? AND queue = ?")
    error = _deleting(fn, path, Q, msg.receipt_handle)
    yield ex.Check("deleting again succeeds", not error, "no error (the message is gone)",
                   error or "no error", hint="A retried delete must not fail: the handle was "
                   "issued by this queue (it is in the receipts table), so succeed.")
    old = _receive(path, Q, 20.0)  # d-1, hidden until 50
    new = _receive(path, Q, 50.0)  # d-1 again: the first worker was too slow
    error = _deleting(fn, path, Q, old.receipt_handle)
    stays = _row(path, "d-1") is not None
    yield ex.Check("a stale handle succeeds and deletes nothing", not error and stays,
                   "no error, d-1 still queued (another worker holds it now)",
                   error or ("d-1 still queued" if stays else "d-1 deleted"),
                   hint="SQS: if you use an old ReceiptHandle, \"the request will succeed, but "
                   "the message might not be deleted\". Match the latest handle only.")
    error = _deleting(fn, path, Q, new.receipt_handle)
    yield ex.Check("the latest handle still deletes", not error and _row(path, "d-1") is None,
                   "d-1 deleted", error or ("d-1 deleted" if _row(path, "d-1") is None
                                            else "d-1 still queued"))
    other = _receive(path, OTHER, 10.0)
    for case, handle in (("a handle never issued", "0f" * 16), ("another queue's handle",
                                                                 other.receipt_handle),
                         ("None as the handle", None)):
        ok, found = _is_invalid(fn, path, Q, handle)
        yield ex.Check(f"{case}: ReceiptHandleIsInvalid", ok,
                       "raise mq.ReceiptHandleIsInvalid", found,
                       hint="Look the handle up in the receipts table (handle, message_id, "
                       "queue): a handle with no row for this queue was never issued here.")
    yield ex.Check("another queue's message stays", _row(path, "o-1") is not None,
                   "o-1 still in its queue", "still there" if _row(path, "o-1") else "deleted")


def step_2_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your delete_message"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="mq-step2-") as tmp:
        yield from ex.rows_or_raised(lambda: _delete_rows(fn, tmp), "delete_message runs",
                                     f"queue {Q!r}, handles from the module's receive_one")


# --- Step 3: redrive ------------------------------------------------------------------

def _redrive_rows(fn: Callable[..., Any], folder: str) -> Iterator[ex.Check]:
    path = _fresh(folder, "redrive")
    now, mrc = 500.0, 3
    cases = {"at-max": (3, 100.0), "below-max": (2, 100.0), "over-max": (5, 100.0),
             "in-flight": (3, 700.0), "never-received": (0, 100.0)}
    for i, (name, (count, visible_at)) in enumerate(cases.items()):
        _put(path, Q, name, float(i), visible_at=visible_at, receive_count=count)
    _put(path, OTHER, "other-queue", 9.0, visible_at=100.0, receive_count=4)
    moved, open_tx = _call(fn, path, Q, DLQ, mrc, now)
    where = {name: (_row(path, name) or {}).get("queue") for name in [*cases, "other-queue"]}
    want = {"at-max": DLQ, "below-max": Q, "over-max": DLQ, "in-flight": Q,
            "never-received": Q, "other-queue": OTHER}
    yield ex.Check("exactly the messages received max_receive_count times and visible move",
                   where == want and not open_tx, f"{want}", f"{where}" + _open_tx(open_tx),
                   hint=OPEN_TX_HINT if open_tx else "WHERE queue = ? AND visible_at <= now AND "
                   "receive_count >= max_receive_count: a message still in flight may yet be "
                   "deleted by its worker.")
    yield ex.Check("returns how many moved", type(moved) is int and moved == 2, "2",
                   f"{moved!r:.40}", hint="Return the UPDATE's cursor.rowcount.")
    row = _row(path, "at-max") or {}
    keeps = {k: row.get(k) for k in ("body", "sent_at", "visible_at", "receipt_handle")}
    want_keeps = {"body": '{"doc": "at-max", "note": "café ✓"}', "sent_at": 0.0,
                  "visible_at": now, "receipt_handle": None}
    yield ex.Check("the moved message keeps its body and sent_at, receivable now", keeps == want_keeps,
                   f"{want_keeps}", f"{keeps}", hint="Change only queue, visible_at (= now) and "
                   "receipt_handle (NULL: the old handle must not delete it in the DLQ). SQS "
                   "keeps the original enqueue time, so retention in the DLQ counts from it.")
    again, _ = _call(fn, path, Q, DLQ, mrc, now)
    yield ex.Check("a second redrive moves nothing", again == 0, "0", f"{again!r:.40}")
    for bad in (0, 1001, 2.5, True, "3"):
        try:
            _call(fn, path, Q, DLQ, bad, now)
            found = "no error"
        except mq.InvalidAttributeValue:
            continue
        except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
            found = f"{type(exc).__name__}: {exc}"
        yield ex.Check("maxReceiveCount outside 1-1,000 is refused", False,
                       "mq.InvalidAttributeValue for 0, 1001, 2.5, True and '3'",
                       f"max_receive_count={bad!r}: {found}",
                       hint="Call mq.check_redrive_policy(queue, dead_letter_queue, "
                       "max_receive_count) first: an int from 1 to 1,000, and a DLQ that is "
                       "not the queue itself.")
        return
    yield ex.Check("maxReceiveCount outside 1-1,000 is refused", True,
                   "mq.InvalidAttributeValue for 0, 1001, 2.5, True and '3'", "refused, each")


def step_3_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your redrive"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="mq-step3-") as tmp:
        yield from ex.rows_or_raised(lambda: _redrive_rows(fn, tmp), "redrive runs",
                                     f"queue {Q!r}, max_receive_count 3, now 500")


# --- Step 4: apply once -----------------------------------------------------------------

def _effects(path: Path, doc_id: str) -> tuple[list[str], bool]:
    """(the effect texts of ``doc_id``, whether it is marked processed)."""
    with closing(connect(path)) as db:
        texts = [r[0] for r in db.execute("SELECT text FROM effects WHERE doc_id = ?", (doc_id,))]
        marked = db.execute("SELECT 1 FROM processed WHERE doc_id = ?", (doc_id,)).fetchone()
    return texts, marked is not None


def _apply_rows(fn: Callable[..., Any], folder: str) -> Iterator[ex.Check]:
    path = _fresh(folder, "apply")
    results = []
    for doc_id, text in (("a-1", "FIRST"), ("a-1", "FIRST AGAIN"), ("a-2", "SECOND")):
        got, open_tx = _call(fn, path, doc_id, text)
        results.append(got)
        if open_tx:
            yield ex.Check("no transaction left open", False, "closed", "left open",
                           hint=OPEN_TX_HINT)
            return
    state = {d: _effects(path, d) for d in ("a-1", "a-2")}
    want = {"a-1": (["FIRST"], True), "a-2": (["SECOND"], True)}
    ok = [type(r) is bool and r for r in results] == [True, False, True] and state == want
    yield ex.Check("the effect once, and True only the first time", ok,
                   "True, False, True; a-1: one effect 'FIRST', a-2: 'SECOND', both processed",
                   f"{results}; {state}", hint="INSERT OR IGNORE INTO processed; if its rowcount "
                   "is 1, INSERT INTO effects (doc_id, text); return whether it was.")
    if not ok:
        return
    broken, statements = [], _statement_count(fn, path)
    for fail_at in range(1, statements + 1):
        doc_id = f"crash-{fail_at}"
        db = FailingAt(connect(path), fail_at)
        try:
            fn(db, doc_id, "TEXT")
        except InjectedFailure:
            pass  # the crash we injected: what matters is what it left behind
        finally:
            db.close()  # uncommitted work is rolled back, as when a process dies
        texts, marked = _effects(path, doc_id)
        if len(texts) != int(marked):
            broken.append(f"before statement {fail_at}: {len(texts)} effect(s), "
                          f"{'marked' if marked else 'not marked'} processed")
        _call(fn, path, doc_id, "TEXT")  # the redelivery after the crash
        texts, _ = _effects(path, doc_id)
        if len(texts) != 1:
            broken.append(f"before statement {fail_at}, then retried: {len(texts)} effects")
    yield ex.Check(f"a crash before each of its {statements} statements, then a retry",
                   not broken, "effect and mark both or neither; one effect after the retry",
                   "; ".join(broken) or "both or neither, one effect after each retry",
                   hint="Each statement outside a transaction commits on its own. BEGIN "
                   "IMMEDIATE … COMMIT around both inserts, ROLLBACK if anything raises.")
    got = race(lambda db: fn(db, "raced", "RACED"), path, THREADS)
    texts, _ = _effects(path, "raced")
    trues = sum(1 for g in got if g is True)
    yield ex.Check(f"{THREADS} deliveries of one document at once", trues == 1 and len(texts) == 1,
                   "1 effect, exactly one True", f"{len(texts)} effects, {trues} True"
                   + (f"; {next(g for g in got if type(g) is str)!r:.80}"
                      if any(type(g) is str for g in got) else ""),
                   hint="Checking 'is it processed?' and then inserting lets two workers both "
                   "see 'no'. Take the write lock first (BEGIN IMMEDIATE) or let INSERT OR "
                   "IGNORE on the primary key decide.")


def _statement_count(fn: Callable[..., Any], path: Path) -> int:
    """How many statements ``fn`` runs on a new document when nothing fails."""
    db = FailingAt(connect(path), None)
    try:
        fn(db, "count-statements", "TEXT")
    finally:
        db.close()
    return db.statements


def step_4_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your apply_once"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="mq-step4-") as tmp:
        yield from ex.rows_or_raised(lambda: _apply_rows(fn, tmp), "apply_once runs",
                                     "documents a-1 (twice) and a-2, then crashes and races")
