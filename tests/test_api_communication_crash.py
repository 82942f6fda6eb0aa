"""Crash recovery over HTTP with real SIGKILLs: a crash never blocks a key for longer than
its lease, and a retry after any crash point ends in exactly one charge, recorded once.

The payment service runs as its own process (``services.start_payment_process``, i.e.
``python -m labsupport.services.api_communication``) with the answer key's handler and a
short lease. It kills itself with SIGKILL the first time a charge gets past a crash point
(after the claim, after the card network charged, after the payment and response were
stored); a new process starts on the same SQLite ledger; the client retries with the same
key until it gets an answer that is not 409. Charges and payments are read from the
SQLite file with plain SQL.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from labsupport.services import api_communication as services
from labsupport.services.api_communication import CRASH_POINTS

LEASE = 1.0  # seconds: the demo's lock timeout (Brandur Leach's is 90 s)
PROCESSOR_DELAY = 0.05  # seconds per charge at the card network
RESPONSE_MARGIN = 2.0  # seconds a 409 may take to come back after the lease ran out


def _start(db: Path, log: Path, crash_after: str | None = None):
    return services.start_payment_process(db, lease=LEASE, processor_delay=PROCESSOR_DELAY,
                                          crash_after=crash_after, log=log)


def _post(url: str, key: str, body: dict) -> httpx.Response | None:
    try:
        return httpx.post(f"{url}/charges", json=body, headers={"Idempotency-Key": f'"{key}"'},
                          timeout=10)
    except httpx.TransportError:
        return None  # the process died under us


def _sql(db: Path, query: str, *params) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(query, params).fetchall()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_point_then_retry_gives_exactly_one_charge(point, tmp_path):
    db, log, key = tmp_path / "ledger.sqlite", tmp_path / "services.log", f"k-{point}"
    body = {"order_id": f"order-{point}", "amount_cents": 4200}
    crashing, url = _start(db, log, crash_after=point)
    try:
        first = _post(url, key, body)
        assert first is None, f"the service should have died after '{point}', got {first}"
        assert crashing.wait(timeout=10) == -9  # killed by SIGKILL, not a clean exit
    finally:
        crashing.kill()
        crashing.wait(timeout=10)
    restarted, url = _start(db, log)
    try:
        started, conflicts = time.monotonic(), []
        while True:
            reply = _post(url, key, body)
            assert reply is not None, log.read_text(errors="replace")
            if reply.status_code != 409:
                break
            conflicts.append(time.monotonic() - started)
            assert time.monotonic() - started < LEASE + 10, "409 for far longer than the lease"
            time.sleep(0.1)
        # a second retry replays the same answer
        again = _post(url, key, body)
    finally:
        restarted.kill()
        restarted.wait(timeout=10)
    charges = _sql(db, "SELECT charge_id FROM charges WHERE order_id = ?", body["order_id"])
    assert len(charges) == 1, f"crash after {point}: {len(charges)} charges"
    (charge_id,), = charges
    assert reply.status_code == 201 and reply.json()["charge_id"] == charge_id
    assert again is not None and again.status_code == 201
    assert again.json()["charge_id"] == charge_id
    # the service's books: the payment recorded exactly once, under this key
    assert _sql(db, "SELECT charge_id, amount_cents, idempotency_key FROM payments") == [
        (charge_id, 4200, key)]
    if point == "response":  # the response was stored: the first retry replays it at once
        assert not conflicts
    else:  # 409 only while the dead request's lease lasts (none if it ran out before the
        # restart); the margin covers a request's own time on a busy machine
        assert not conflicts or max(conflicts) < LEASE + RESPONSE_MARGIN


def test_faults_endpoint_sets_a_crash_point_in_a_service_process(tmp_path):
    """A service in a process of its own accepts crash_after from POST /faults (only one
    of CRASH_POINTS), and then dies at that point with the charge already taken."""
    db, log = tmp_path / "ledger.sqlite", tmp_path / "services.log"
    process, url = _start(db, log)
    try:
        bad = httpx.post(f"{url}/faults", json={"crash_after": "nowhere"}, timeout=10)
        assert bad.status_code == 400
        ok = httpx.post(f"{url}/faults", json={"crash_after": "charge"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["crash_after"] == "charge"
        assert _post(url, "k-f", {"order_id": "order-f", "amount_cents": 300}) is None
        assert process.wait(timeout=10) == -9
    finally:
        process.kill()
        process.wait(timeout=10)
    assert _sql(db, "SELECT order_id, processor_key FROM charges") == [("order-f", "k-f")]
    assert _sql(db, "SELECT COUNT(*) FROM payments") == [(0,)]  # it died before finish
