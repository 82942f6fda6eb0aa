"""Benchmark for ``03_message_queues.ipynb``: the SQLite queue's throughput (send,
receive and delete, one message per call) with 1 and 4 threads.

``make bench`` calls :func:`benchmark`; from the shell::

    python -m labsupport.bench.message_queues --messages 2000
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable

from labsupport.message_queues import Queue


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
    row = {"threads": threads,
           "send_per_s": total / _timed_threads(sender, threads),
           "receive_per_s": total / _timed_threads(receiver, threads),
           "delete_per_s": total / _timed_threads(deleter, threads)}
    # DeleteMessage answers nothing (a stale handle also succeeds): count what is left
    left = len(q)
    q.close()
    if left:
        raise RuntimeError(f"{left} messages left after deleting every handle received")
    return row


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


def main(argv: list[str] | None = None) -> None:
    """Print the queue's throughput table."""
    parser = argparse.ArgumentParser(prog="python -m labsupport.bench.message_queues",
                                     description="Queue throughput of 03_message_queues.")
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    print(f"queue throughput, {args.messages} messages, SQLite {sqlite3.sqlite_version} WAL")
    for row in bench(args.messages):
        print(f"  {row['threads']} thread(s): send {row['send_per_s']:7.0f}/s  "
              f"receive {row['receive_per_s']:7.0f}/s  delete {row['delete_per_s']:7.0f}/s")


if __name__ == "__main__":
    main()
