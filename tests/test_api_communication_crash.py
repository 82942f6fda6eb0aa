"""Crash recovery over HTTP with real SIGKILLs: a crash never blocks a key for longer than
its lease, and a retry after any crash point ends in exactly one charge.

The payment service runs as its own process (``python -m labsupport.services.api_communication``)
with the answer key's handler and a short lease. It kills itself with SIGKILL the first time
a charge gets past a crash point (after the claim, after the card network charged, after the
response was stored); a new process starts on the same SQLite ledger; the client retries with
the same key until it gets an answer that is not 409.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labsupport import api_communication as api
from labsupport.services.api_communication import CRASH_POINTS

LEASE = 1.0  # seconds: the demo's lock timeout (Brandur Leach's is 90 s)
START_TIMEOUT = 60.0  # seconds for a service process to answer /health (a busy machine)
RESPONSE_MARGIN = 2.0  # seconds a 409 may take to come back after the lease ran out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(db: Path, crash_after: str | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "labsupport.services.api_communication", "--port", str(port),
               "--db", str(db), "--lease", str(LEASE), "--processor-delay", "0.05"]
    if crash_after:
        command += ["--crash-after", crash_after]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the payment service did not start on {url}")


def _post(url: str, key: str, body: dict) -> httpx.Response | None:
    try:
        return httpx.post(f"{url}/charges", json=body, headers={"Idempotency-Key": f'"{key}"'},
                          timeout=10)
    except httpx.TransportError:
        return None  # the process died under us


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_point_then_retry_gives_exactly_one_charge(point, tmp_path):
    db, key = tmp_path / "ledger.sqlite", f"k-{point}"
    body = {"order_id": f"order-{point}", "amount_cents": 4200}
    crashing, url = _start(db, crash_after=point)
    try:
        first = _post(url, key, body)
        assert first is None, f"the service should have died after '{point}', got {first}"
        assert crashing.wait(timeout=10) == -9  # killed by SIGKILL, not a clean exit
    finally:
        crashing.kill()
    restarted, url = _start(db)
    try:
        started, conflicts = time.monotonic(), []
        while True:
            reply = _post(url, key, body)
            assert reply is not None
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
    charges = api.Ledger(db).charges(body["order_id"])
    assert len(charges) == 1, f"crash after {point}: {len(charges)} charges"
    assert reply.status_code == 201 and reply.json()["charge_id"] == charges[0]["charge_id"]
    assert again is not None and again.status_code == 201
    assert again.json()["charge_id"] == charges[0]["charge_id"]
    if point == "response":  # the response was stored: the first retry replays it at once
        assert not conflicts
    else:  # 409 only while the dead request's lease lasts (none if it ran out before the
        # restart); the margin covers a request's own time on a busy machine
        assert not conflicts or max(conflicts) < LEASE + RESPONSE_MARGIN
