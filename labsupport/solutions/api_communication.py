"""Answer key for ``01_api_communication.ipynb``: the four steps, the scenario and the quiz.

The scenario's handler follows the IETF draft ``draft-ietf-httpapi-idempotency-key-header``:
a missing key is 400, the same key with another payload is 422, a retry while the first
request is still in flight is 409, and a retry of a finished request replays the stored
response.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

import numpy as np

from labsupport import api_communication as api
from labsupport.api_communication import ChargeRequest, Ledger, Reply

# --- Step 1: backoff with full jitter and with decorrelated jitter ---------------------

def full_jitter(attempt: int, base: float, cap: float, rng: np.random.Generator) -> float:
    """Sleep before retry ``attempt`` (0 = first retry): uniform in [0, min(cap, base*2**attempt)]."""
    return float(rng.uniform(0.0, min(cap, base * 2.0 ** attempt)))


def decorrelated_jitter(previous: float | None, base: float, cap: float,
                        rng: np.random.Generator) -> float:
    """Sleep grown from the last one: uniform in [base, 3 * previous], at most ``cap``."""
    last = base if previous is None else previous
    return min(cap, float(rng.uniform(base, 3.0 * last)))


# --- Step 2: the request fingerprint -------------------------------------------------

def request_fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON: sorted keys at every depth, no spaces."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- Step 3: the atomic claim ---------------------------------------------------------

def claim(db: sqlite3.Connection, key: str, fingerprint: str, now: float, lease: float) -> str:
    """One transaction under the write lock: insert the key, or read what holds it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + api.STRIPE_KEY_TTL, now)).rowcount == 1
        outcome = "claimed"
        if not inserted:
            stored, status, locked_at = db.execute(
                "SELECT fingerprint, status, locked_at FROM idempotency_keys WHERE key = ?",
                (key,)).fetchone()
            if stored != fingerprint:
                outcome = "mismatch"
            elif status == "done":
                outcome = "replay"
            elif locked_at > now - lease:
                outcome = "in_flight"
            else:  # the holder's lease ran out: it crashed or hangs; take over
                db.execute("UPDATE idempotency_keys SET locked_at = ? WHERE key = ?", (now, key))
        db.execute("COMMIT")
        return outcome
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --- Step 4: the payment and its response in one transaction ---------------------------

def finish(db: sqlite3.Connection, key: str, charge: dict[str, Any], reply: Reply) -> None:
    """Both rows commit together or not at all."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?)",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ?, locked_at = NULL WHERE key = ?",
                   (reply.status, json.dumps(reply.body), key))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --- The scenario: the idempotent charge handler ---------------------------------------

def idempotent_charge(ledger: Ledger, key: str | None, request: ChargeRequest) -> Reply:
    """Charge at most once per Idempotency-Key; replay the first response on a retry."""
    if key is None:
        return Reply(400, {"error": "this endpoint requires an Idempotency-Key header"})
    fp = api.fingerprint(request.as_dict())
    outcome = ledger.claim(key, fp)  # one transaction: exactly one request wins the key
    if outcome == "mismatch":
        return Reply(422, {"error": "Idempotency-Key reused with a different payload"})
    if outcome == "in_flight":
        return Reply(409, {"error": "a request with this Idempotency-Key is in progress"})
    if outcome == "replay":
        return ledger.stored_reply(key) or Reply(409, {"error": "retry"})
    try:  # "claimed". The card network's own key: a takeover after a crash finds the charge
        charge = ledger.charge(request, key=key, processor_key=key)
    except Exception:
        ledger.release(key)  # nothing was charged: let a retry try again
        raise
    reply = Reply(201, charge)
    ledger.finish(key, charge, reply)  # the payment and the response, one transaction
    return reply


# --- The review quiz --------------------------------------------------------------------

QUIZ_ANSWERS = {"reused-key": 2, "in-flight": 0, "decorrelated-mean": 631.8, "claim-race": 1,
                "takeover": 2}
