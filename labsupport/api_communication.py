"""Backs ``01_api_communication.ipynb``: retries with jitter, and idempotency keys.

* Backoff with no, full, equal and decorrelated jitter (Marc Brooker, "Exponential Backoff
  And Jitter", AWS Architecture Blog, 2015); the blog's contention test is simulated in
  ``explore/api_communication.py``.
* Idempotency keys in SQLite: the request :func:`fingerprint`, the atomic :func:`claim_key`
  with a lease, :func:`finish` (payment and response in one transaction), the :class:`Ledger`.
* A retrying HTTP client (:func:`post_with_retries`): timeouts, a retry policy, a log.

The HTTP services are in ``services/api_communication.py``, the checker in ``checks/``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import httpx
import numpy as np

# --- 1. Backoff and jitter ----------------------------------------------------------

Strategy = Literal["none", "full", "equal", "decorrelated"]
STRATEGIES: tuple[Strategy, ...] = ("none", "full", "equal", "decorrelated")
STRATEGY_NAMES = {"none": "no jitter", "full": "full jitter", "equal": "equal jitter",
                  "decorrelated": "decorrelated jitter"}


def expo(attempt: int, base: float, cap: float) -> float:
    """The un-jittered exponential backoff before retry ``attempt`` (0 = first retry):
    ``min(cap, base * 2**attempt)``. Same unit as ``base`` and ``cap``."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # min first in log space, so a large attempt cannot overflow 2**attempt
    return cap if attempt >= 64 else min(cap, base * 2.0 ** attempt)


def backoff_delay(attempt: int, strategy: Strategy, base: float, cap: float,
                  rng: np.random.Generator, previous: float | None = None) -> float:
    """How long to sleep before retry ``attempt`` under ``strategy``.

    * ``"none"``:  ``expo``                       every client waits exactly as long
    * ``"full"``:  ``U(0, expo)``                 the blog's "Full Jitter"
    * ``"equal"``: ``expo/2 + U(0, expo/2)``      the blog's "Equal Jitter"
    * ``"decorrelated"``: ``min(cap, U(base, 3 * previous))``, the blog's "Decorrelated
      Jitter": it grows from the client's own last sleep (``previous``, ``base`` before
      the first retry), not from the attempt number.
    """
    if strategy == "decorrelated":
        last = base if previous is None else previous
        return min(cap, float(rng.uniform(base, max(base, 3.0 * last))))
    e = expo(attempt, base, cap)
    if strategy == "none":
        return e
    if strategy == "full":
        return float(rng.uniform(0.0, e))
    if strategy == "equal":
        return e / 2 + float(rng.uniform(0.0, e / 2))
    raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")


# --- 2. The ledger (SQLite): idempotency keys, payments, and the card network -------

STRIPE_KEY_TTL = 24 * 3600.0  # seconds; Stripe may prune keys once they are at least 24 h old
KEY_LEASE = 90.0  # seconds a claim stays locked: Brandur Leach's IDEMPOTENCY_KEY_LOCK_TIMEOUT
MAX_KEY_LENGTH = 255  # characters; Stripe's limit


@dataclass(frozen=True)
class ChargeRequest:
    """The body of ``POST /charges``."""

    order_id: str
    amount_cents: int  # integer cents: never store money in floats
    currency: str = "eur"

    def as_dict(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "amount_cents": self.amount_cents,
                "currency": self.currency}


class Reply(NamedTuple):
    """What a handler returns: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


def fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of the body's canonical JSON (keys sorted at every depth, no spaces): the
    same payload gives the same fingerprint, in any key order and in any process."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key             TEXT PRIMARY KEY,      -- the unique constraint that makes a claim atomic
    fingerprint     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('in_flight', 'done')),
    response_code   INTEGER,               -- the stored first response, once done
    response_body   TEXT,
    created_at      REAL NOT NULL,         -- seconds
    expires_at      REAL NOT NULL,
    locked_at       REAL                   -- when the request that holds the claim took it
);
CREATE TABLE IF NOT EXISTS payments (      -- the service's books: orders it knows are paid
    charge_id       TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (       -- the card network's side: money actually taken
    charge_id       TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      REAL NOT NULL,
    processor_key   TEXT UNIQUE            -- the card network's own idempotency key (or NULL)
);
"""

Outcome = Literal["claimed", "in_flight", "replay", "mismatch"]


def claim_key(db: sqlite3.Connection, key: str, fingerprint: str, now: float,
              lease: float, ttl: float = STRIPE_KEY_TTL) -> Outcome:
    """Claim ``key`` for a request with this payload ``fingerprint``, atomically.

    ``"claimed"``: this request owns the key and may charge: it inserted the row, or the
    row's lease (``lease`` s from ``locked_at``) ran out, so its request crashed or hangs
    and this one takes over. ``"mismatch"``: another payload's key. ``"replay"``: its
    response is stored. ``"in_flight"``: another request holds it. One transaction under
    SQLite's write lock (``BEGIN IMMEDIATE``); ``db`` in autocommit mode; seconds.
    """
    db.execute("BEGIN IMMEDIATE")  # the write lock, for every statement until COMMIT
    try:
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + ttl, now)).rowcount == 1
        outcome: Outcome = "claimed"
        if not inserted:
            stored_fp, status, locked_at = db.execute(
                "SELECT fingerprint, status, locked_at FROM idempotency_keys WHERE key = ?",
                (key,)).fetchone()
            if stored_fp != fingerprint:
                outcome = "mismatch"
            elif status == "done":
                outcome = "replay"
            elif locked_at > now - lease:
                outcome = "in_flight"
            else:  # the lease ran out: take the claim over
                db.execute("UPDATE idempotency_keys SET locked_at = ? WHERE key = ?", (now, key))
        db.execute("COMMIT")
        return outcome
    except BaseException:
        db.execute("ROLLBACK")
        raise


def finish(db: sqlite3.Connection, key: str, charge: dict[str, Any], reply: Reply) -> None:
    """Record the payment and store ``reply`` for ``key``, in ONE transaction: a crash
    leaves both or neither, never a paid order without its response or the reverse."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ?, locked_at = NULL WHERE key = ?",
                   (int(reply.status), json.dumps(reply.body), key))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Ledger:
    """The payment service's durable state: a SQLite file, so a restart loses nothing.

    Every method opens its own short-lived connection, so the ledger can be shared by the
    server's worker threads. The ``charges`` table stands for the card network, a separate
    system in real life: :meth:`charge` takes the money (``processor_delay`` s, which is
    what makes races visible) and commits on its own. ``clock`` (seconds) is injectable so
    that key expiry can be shown without waiting a day.
    """

    def __init__(self, path: str | Path, *, key_ttl: float = STRIPE_KEY_TTL,
                 lease: float = KEY_LEASE, processor_delay: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.key_ttl, self.lease = Path(path), key_ttl, lease
        self.processor_delay, self.clock = processor_delay, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self.connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            db.executescript(SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """A new connection in autocommit mode (we issue BEGIN ourselves) that waits up to
        30 s for the write lock. Close it when done: ``with closing(ledger.connect())``."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with closing(self.connect()) as db:
            return [dict(r) for r in db.execute(sql, params).fetchall()]

    # --- idempotency keys ----------------------------------------------------------

    def claim(self, key: str, fingerprint: str) -> Outcome:
        """:func:`claim_key` at the ledger's clock, after deleting the key if it expired."""
        now = self.clock()
        with closing(self.connect()) as db:
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND expires_at <= ?", (key, now))
            return claim_key(db, key, fingerprint, now, self.lease, self.key_ttl)

    def stored_reply(self, key: str) -> Reply | None:
        """The response stored for ``key`` (after ``"replay"``), or None."""
        rows = self._rows("SELECT response_code, response_body FROM idempotency_keys "
                          "WHERE key = ? AND status = 'done'", key)
        return Reply(rows[0]["response_code"], json.loads(rows[0]["response_body"])) if rows else None

    def finish(self, key: str, charge: dict[str, Any], reply: Reply) -> None:
        """:func:`finish`: the payment and the response, in one transaction."""
        with closing(self.connect()) as db:
            finish(db, key, charge, reply)

    def release(self, key: str) -> None:
        """Forget a claim whose request failed before charging, so a retry can run."""
        with closing(self.connect()) as db:
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND status = 'in_flight'", (key,))

    # --- the card network, and the service's books -----------------------------------

    def charge(self, request: ChargeRequest, key: str | None = None,
               processor_key: str | None = None) -> dict[str, Any]:
        """Charge the card and return the charge. Every call charges again, unless
        ``processor_key`` is given: the card network's own idempotency (as Stripe's API
        offers) then returns the first charge made with that key."""
        if self.processor_delay > 0:
            time.sleep(self.processor_delay)  # the card network
        charge = {"charge_id": "ch_" + uuid.uuid4().hex[:16], **request.as_dict(),
                  "idempotency_key": key, "created_at": round(self.clock(), 6),
                  "processor_key": processor_key}
        with closing(self.connect()) as db:
            db.execute("INSERT INTO charges VALUES (:charge_id, :order_id, :amount_cents, "
                       ":currency, :idempotency_key, :created_at, :processor_key) "
                       "ON CONFLICT(processor_key) DO NOTHING", charge)
        return charge if processor_key is None else self.find_charge(processor_key)

    def find_charge(self, processor_key: str) -> dict[str, Any] | None:
        """Ask the card network: the charge made with ``processor_key``, or None."""
        rows = self._rows("SELECT * FROM charges WHERE processor_key = ?", processor_key)
        return rows[0] if rows else None

    def charges(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """Money taken (of one order, if given), oldest first."""
        return self._rows("SELECT * FROM charges WHERE ?1 IS NULL OR order_id = ?1 "
                          "ORDER BY created_at, rowid", order_id)

    def payments(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """The service's books: the payments it recorded (of one order, if given)."""
        return self._rows("SELECT * FROM payments WHERE ?1 IS NULL OR order_id = ?1 "
                          "ORDER BY rowid", order_id)


# A charge handler, called for every POST /charges (the exercise asks you to write one):
ChargeHandler = Callable[[Ledger, "str | None", ChargeRequest], Reply]


def naive_charge(ledger: Ledger, key: str | None, request: ChargeRequest) -> Reply:
    """Charges on every request and ignores the key: the handler behind the double charge."""
    return Reply(201, ledger.charge(request, key=key))


# --- 3. A client with timeouts and retries ------------------------------------------

RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})  # 409: the key is still in flight


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries. Seconds throughout."""

    max_attempts: int = 4  # first try included
    base: float = 0.05
    cap: float = 1.0
    strategy: Strategy = "full"
    timeout: float = 0.5  # per attempt: how long we wait for a response


@dataclass
class Attempt:
    number: int
    outcome: str  # "201", "timeout", "connection error", …
    seconds: float  # how long the attempt took
    slept: float  # backoff slept after it


@dataclass
class CallResult:
    response: httpx.Response | None
    attempts: list[Attempt]

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status_code

    def log(self) -> str:
        return "; ".join(f"#{a.number} {a.outcome} after {a.seconds:.2f} s"
                         + (f", sleep {a.slept:.2f} s" if a.slept else "") for a in self.attempts)


def post_with_retries(url: str, payload: dict[str, Any], *, key: str | None = None,
                      policy: RetryPolicy = RetryPolicy(), seed: int = 0,
                      client: httpx.Client | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> CallResult:
    """POST with a per-attempt timeout, retrying timeouts, dropped connections and
    retryable statuses with backoff. Sends ``Idempotency-Key`` (the same one on every
    attempt: that is the point) when ``key`` is given."""
    rng = np.random.default_rng(seed)
    headers = {"Idempotency-Key": f'"{key}"'} if key else {}
    own = client is None
    client = client or httpx.Client()
    attempts: list[Attempt] = []
    response = None
    try:
        for n in range(policy.max_attempts):
            started = time.perf_counter()
            try:
                response = client.post(url, json=payload, headers=headers, timeout=policy.timeout)
                outcome = str(response.status_code)
                retry = response.status_code in RETRYABLE_STATUS
            except httpx.TimeoutException:
                response, outcome, retry = None, "timeout", True
            except httpx.TransportError as exc:
                response, outcome, retry = None, f"connection error ({type(exc).__name__})", True
            took = time.perf_counter() - started
            last = n == policy.max_attempts - 1
            delay = (backoff_delay(n, policy.strategy, policy.base, policy.cap, rng,
                                   previous=attempts[-1].slept if attempts else None)
                     if retry and not last else 0.0)
            attempts.append(Attempt(n + 1, outcome, took, delay))
            if not retry:
                break
            if delay:
                sleep(delay)
    finally:
        if own:
            client.close()
    return CallResult(response, attempts)
