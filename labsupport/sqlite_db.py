"""A SQLite file shared by threads and processes: one connection per thread, WAL mode,
and ``BEGIN IMMEDIATE`` write transactions. Used by ``03_message_queues.ipynb``'s queue
and result store."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

# One connection per thread and file (a connection must not be shared between threads),
# and one in-process write lock per file: threads queue on it instead of SQLite's busy
# handler, which sleeps in steps of milliseconds. Other processes wait through busy_timeout.
_local = threading.local()
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


class Database:
    """A SQLite file with per-thread connections and write transactions."""

    def __init__(self, path: str | os.PathLike, schema: str, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL (survives a process crash) or FULL "
                             "(also survives a power loss)")
        self.path = os.path.realpath(os.fspath(path))
        self.synchronous = synchronous.upper()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with _write_locks_guard:
            self.lock = _write_locks.setdefault(self.path, threading.Lock())
        with self.lock:
            self.conn().executescript(schema)  # IF NOT EXISTS: reopening keeps the data

    def conn(self) -> sqlite3.Connection:
        conns = _local.__dict__.setdefault("conns", {})  # this thread's connections
        conn = conns.get(self.path)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conns[self.path] = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: one writer at a time, across threads and processes."""
        conn = self.conn()
        with self.lock:
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
