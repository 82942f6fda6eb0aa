"""SQLite connections that misbehave on purpose, for the step checks of 01 and 03.

- :class:`Interleaving`: many threads, each held back after its first statement that
  touches data until all got there: the worst interleaving for code that reads and then
  writes in separate steps. The verdict comes from counts, never from timing.
- :class:`FailingAt`: a connection that fails before its n-th statement: a crash between
  two statements.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BARRIER_WAIT = 20.0  # seconds, at most, a thread waits for the others (none ever should)


def connect(path: Path | str) -> sqlite3.Connection:
    """Autocommit (we issue BEGIN ourselves), usable from any thread, rows by name."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


class _Wrapped:
    """A connection that passes everything but ``execute`` through."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> _Wrapped:  # `with db:` behaves as on a plain connection
        self._db.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._db.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class Interleaving(_Wrapped):
    """Holds its thread back after the thread's first statement that touches data, until
    every thread got there. The wait happens just before the thread's next statement (or
    when it finishes): nothing reaches the database in between, and a statement whose
    rows were not all read yet (``UPDATE … RETURNING`` then ``fetchone()``) has been
    released by then. A thread that holds the write lock (``BEGIN IMMEDIATE``, or a write
    inside a transaction) does not wait: the others could not get past it."""

    def __init__(self, db: sqlite3.Connection, barrier: threading.Barrier) -> None:
        super().__init__(db)
        self._barrier = barrier
        self._touched, self._waited, self._write_lock = False, False, False

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        statement = sql.lstrip().upper()
        if self._touched and not self._waited:
            self._wait()
        try:
            return self._db.execute(sql, *params)
        finally:
            if statement.startswith("BEGIN"):
                self._write_lock = "IMMEDIATE" in statement or "EXCLUSIVE" in statement
            elif not self._touched:
                self._touched = True
                if self._db.in_transaction and (self._write_lock
                                                or not statement.startswith("SELECT")):
                    self._waited = True  # it holds the write lock: waiting would deadlock

    def _wait(self) -> None:
        self._waited = True
        try:
            self._barrier.wait(timeout=BARRIER_WAIT)
        except threading.BrokenBarrierError:
            pass  # a thread ended without touching data: nothing left to wait for

    def done(self) -> None:
        """The thread is done: wait if it still owes a wait, or, if it never touched
        data, stop the others waiting for it."""
        if self._touched and not self._waited:
            self._wait()
        elif not self._touched:
            self._barrier.abort()


def race(fn: Callable[[Any], Any], path: Path | str, threads: int) -> list[Any]:
    """``fn(connection)`` in ``threads`` threads released together (see
    :class:`Interleaving`); each thread's result, or ``"raised Name: message"``."""
    barrier = threading.Barrier(threads)

    def one(_: int) -> Any:
        db = Interleaving(connect(path), barrier)
        try:
            return fn(db)
        except Exception as exc:  # noqa: BLE001 - each thread's error is part of the finding
            return f"raised {type(exc).__name__}: {exc}"
        finally:
            db.done()
            db.close()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(threads)))


class InjectedFailure(sqlite3.OperationalError):
    """The disk failing under a statement: raised by the check, not by your code."""


class FailingAt(_Wrapped):
    """Raises :class:`InjectedFailure` instead of running statement ``fail_at`` (from 1):
    a crash between two statements. ``statements`` counts the statements tried."""

    def __init__(self, db: sqlite3.Connection, fail_at: int | None) -> None:
        super().__init__(db)
        self.fail_at, self.statements = fail_at, 0

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        self.statements += 1
        if self.statements == self.fail_at:
            raise InjectedFailure(f"disk I/O error (injected before statement {self.fail_at})")
        return self._db.execute(sql, *params)
