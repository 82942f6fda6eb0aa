"""Backs ``01_api_communication.ipynb``: sync vs async APIs, retries with jitter, idempotency keys.

What is in here, in the order the notebook meets it:

* Backoff: ``expo = min(cap, base * 2**n)`` with no jitter, full jitter ``U(0, expo)`` and
  equal jitter ``expo/2 + U(0, expo/2)`` (Marc Brooker, "Exponential Backoff And Jitter",
  AWS Architecture Blog, 2015), and a small contention simulation that reproduces the
  blog's result.
* A retrying HTTP client (:func:`post_with_retries`): timeouts, a retry policy, a log.
* A SQLite :class:`Ledger`: charges, and an ``idempotency_keys`` table whose primary key
  makes claiming a key atomic.
* Two FastAPI services served by uvicorn on 127.0.0.1 (a free port): the payment service,
  whose charge handler is pluggable and which has a fault switch that commits the charge
  and then loses the response, and an order service with a synchronous path and an
  asynchronous one (``202 Accepted`` + ``Location`` to poll).
* :func:`check_exercise`: serves the learner's charge handler for real and drives it over HTTP.

From a shell, ``python -m labsupport.api_communication --port 8000`` serves the payment
service with the reference (idempotent) handler, so it can be hit with curl.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import httpx
import numpy as np
import plotly.graph_objects as go
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from labsupport import exercises as ex
from labsupport import plots, servers

EXERCISE_ID = "01_api_communication"

# =====================================================================================
# 1. Backoff and jitter
# =====================================================================================

Strategy = Literal["none", "full", "equal"]
STRATEGIES: tuple[Strategy, ...] = ("none", "full", "equal")
STRATEGY_NAMES = {"none": "no jitter", "full": "full jitter", "equal": "equal jitter"}


def expo(attempt: int, base: float, cap: float) -> float:
    """The un-jittered exponential backoff before retry ``attempt`` (0 = first retry):
    ``min(cap, base * 2**attempt)``. Same unit as ``base`` and ``cap``."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # min first in log space, so a large attempt cannot overflow 2**attempt
    return cap if attempt >= 64 else min(cap, base * 2.0 ** attempt)


def backoff_delay(attempt: int, strategy: Strategy, base: float, cap: float,
                  rng: np.random.Generator) -> float:
    """How long to sleep before retry ``attempt`` under ``strategy``.

    * ``"none"``:  ``expo``                       every client waits exactly as long
    * ``"full"``:  ``U(0, expo)``                 the blog's "Full Jitter"
    * ``"equal"``: ``expo/2 + U(0, expo/2)``      the blog's "Equal Jitter"
    """
    e = expo(attempt, base, cap)
    if strategy == "none":
        return e
    if strategy == "full":
        return float(rng.uniform(0.0, e))
    if strategy == "equal":
        return e / 2 + float(rng.uniform(0.0, e / 2))
    raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")


@dataclass(frozen=True)
class ContentionResult:
    """One run of the contention simulation."""

    strategy: Strategy
    clients: int
    calls: int  # attempts made by all clients together, first tries included
    finish_times: np.ndarray  # ms, when each client's write succeeded, sorted

    @property
    def completion_ms(self) -> float:
        """Time until the last client succeeded (ms)."""
        return float(self.finish_times[-1]) if len(self.finish_times) else 0.0


def simulate_contention(clients: int, strategy: Strategy, *, base_ms: float = 10.0,
                        cap_ms: float = 1_000.0, call_ms: float = 10.0, call_spread: float = 0.5,
                        seed: int = 0) -> ContentionResult:
    """N clients each write once to one resource under optimistic concurrency; losers back off.

    The model (the one behind the AWS blog's charts): all clients start at t = 0. An attempt
    reads the resource's version at ``t`` and commits at ``t + call_ms``; the commit wins
    only if nobody else committed after our read (compare-and-swap). A loser sleeps
    ``backoff_delay(n, strategy, …)`` after its n-th failure and tries again. Simulated
    time, so the result does not depend on how busy the machine is.
    """
    if clients < 1:
        raise ValueError("clients must be >= 1")
    rng = np.random.default_rng(seed)
    # heap of (commit time, client, read time, failures so far); client breaks ties

    def duration() -> float:  # ms; calls vary a little, as on a real network
        return call_ms * float(rng.uniform(1 - call_spread, 1 + call_spread))

    heap: list[tuple[float, int, float, int]] = [(duration(), c, 0.0, 0) for c in range(clients)]
    heapq.heapify(heap)
    last_commit = -np.inf  # ms, time of the last successful write
    calls = clients
    finish: list[float] = []
    while heap:
        commit_at, client, read_at, failures = heapq.heappop(heap)
        if last_commit <= read_at:  # nobody wrote since we read: our write wins
            last_commit = commit_at
            finish.append(commit_at)
            continue
        retry_read = commit_at + backoff_delay(failures, strategy, base_ms, cap_ms, rng)
        heapq.heappush(heap, (retry_read + duration(), client, retry_read, failures + 1))
        calls += 1
    return ContentionResult(strategy, clients, calls, np.sort(np.array(finish)))


def contention_sweep(client_counts: list[int], strategies: tuple[Strategy, ...] = STRATEGIES,
                     seeds: int = 3, **kwargs: Any) -> dict[Strategy, dict[str, np.ndarray]]:
    """Mean calls and mean completion time (ms) per strategy and client count."""
    out: dict[Strategy, dict[str, np.ndarray]] = {}
    for s in strategies:
        runs = [[simulate_contention(n, s, seed=k, **kwargs) for k in range(seeds)]
                for n in client_counts]
        out[s] = {"clients": np.array(client_counts),
                  "calls": np.array([np.mean([r.calls for r in rs]) for rs in runs]),
                  "completion_ms": np.array([np.mean([r.completion_ms for r in rs]) for rs in runs])}
    return out


def contention_figure() -> go.Figure:
    """The empty figure that :func:`contention_view` fills (two traces: chosen, no jitter)."""
    fig = plots.figure("Clients done over time, one contended resource",
                       x=("time since the herd arrived", "s"), y=("clients done", None))
    fig.add_scatter(x=[], y=[], mode="lines", name="chosen strategy", line=dict(shape="hv"))
    fig.add_scatter(x=[], y=[], mode="lines", name="no jitter (baseline)",
                    line=dict(shape="hv", dash="dot"))
    return fig


def contention_view(fig: go.Figure, clients: int = 50, strategy: Strategy = "full",
                    seed: int = 0) -> str:
    """Widget callback: simulate ``clients`` under ``strategy`` and under no jitter, draw
    both completion curves into ``fig`` and return a one-line summary."""
    chosen = simulate_contention(clients, strategy, seed=seed)
    baseline = simulate_contention(clients, "none", seed=seed)
    steps = np.arange(1, clients + 1)
    with fig.batch_update() if isinstance(fig, go.FigureWidget) else _nullcontext():
        fig.data[0].x, fig.data[0].y = chosen.finish_times / 1000, steps
        fig.data[0].name = STRATEGY_NAMES[strategy]
        fig.data[1].x, fig.data[1].y = baseline.finish_times / 1000, steps
    return (f"{clients} clients: {STRATEGY_NAMES[strategy]} finishes in "
            f"{chosen.completion_ms / 1000:.2f} s with {chosen.calls} calls; no jitter needs "
            f"{baseline.completion_ms / 1000:.2f} s and {baseline.calls} calls "
            f"({baseline.completion_ms / max(chosen.completion_ms, 1e-9):.1f}x the time, "
            f"{baseline.calls / chosen.calls:.1f}x the calls).")


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# =====================================================================================
# 2. The ledger (SQLite): charges and idempotency keys
# =====================================================================================

STRIPE_KEY_TTL = 24 * 3600.0  # seconds; Stripe prunes keys once they are at least 24 h old
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


def fingerprint(request: ChargeRequest) -> str:
    """SHA-256 of the request's canonical JSON: same payload, same fingerprint."""
    canonical = json.dumps(request.as_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """One row of ``idempotency_keys``."""

    key: str
    fingerprint: str
    in_flight: bool  # claimed, no response stored yet
    reply: Reply | None  # the stored first response, once there is one
    created_at: float  # seconds (ledger clock)
    expires_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    charge_id       TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    amount_cents    INTEGER NOT NULL,
    currency        TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key             TEXT PRIMARY KEY,      -- the unique constraint that makes a claim atomic
    fingerprint     TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('in_flight', 'done')),
    response_code   INTEGER,
    response_body   TEXT,
    created_at      REAL NOT NULL,
    expires_at      REAL NOT NULL
);
"""


class Ledger:
    """The payment service's durable state: a SQLite file, so a restart loses nothing.

    Every method opens its own short-lived connection, so the ledger can be shared by the
    server's worker threads. ``processor_delay`` (seconds) stands for the call to the card
    network inside :meth:`charge`; it is what makes races visible. ``clock`` (seconds) is
    injectable so that key expiry can be shown without waiting a day.
    """

    def __init__(self, path: str | Path, *, key_ttl: float = STRIPE_KEY_TTL,
                 processor_delay: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.key_ttl = key_ttl
        self.processor_delay = processor_delay
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves; timeout: wait for the write lock
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    # --- charges -------------------------------------------------------------------

    def charge(self, request: ChargeRequest, key: str | None = None) -> dict[str, Any]:
        """Charge the card (takes ``processor_delay`` s) and record it. Not idempotent:
        every call charges again. Returns the charge as a JSON-ready dict."""
        if self.processor_delay > 0:
            time.sleep(self.processor_delay)  # the card network
        charge = {"charge_id": "ch_" + uuid.uuid4().hex[:16], **request.as_dict(),
                  "idempotency_key": key, "created_at": round(self.clock(), 6)}
        with self._connect() as db:
            db.execute("INSERT INTO charges VALUES (:charge_id, :order_id, :amount_cents, "
                       ":currency, :idempotency_key, :created_at)", charge)
        return charge

    def charges(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """All charges (of one order, if given), oldest first."""
        with self._connect() as db:
            if order_id is None:
                rows = db.execute("SELECT * FROM charges ORDER BY created_at, rowid").fetchall()
            else:
                rows = db.execute("SELECT * FROM charges WHERE order_id = ? "
                                  "ORDER BY created_at, rowid", (order_id,)).fetchall()
        return [dict(r) for r in rows]

    def count_charges(self, order_id: str | None = None) -> int:
        return len(self.charges(order_id))

    # --- idempotency keys ----------------------------------------------------------

    def claim_key(self, key: str, fingerprint: str) -> bool:
        """Atomically claim ``key`` for a request with this payload ``fingerprint``.

        True: this request owns the key now (row inserted as ``in_flight``). False: the
        key exists already (in flight or done; look at :meth:`get_key`). One INSERT
        against the primary key, never check-then-insert: two racing requests cannot
        both win. An expired key is deleted first, in the same transaction.
        """
        now = self.clock()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock for both statements
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND expires_at <= ?",
                       (key, now))
            cur = db.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at) "
                "VALUES (?, ?, 'in_flight', ?, ?) ON CONFLICT(key) DO NOTHING",
                (key, fingerprint, now, now + self.key_ttl))
            db.execute("COMMIT")
            return cur.rowcount == 1
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def get_key(self, key: str) -> KeyRecord | None:
        """The record of ``key``, or None if there is none or it has expired."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM idempotency_keys WHERE key = ? AND expires_at > ?",
                             (key, self.clock())).fetchone()
        if row is None:
            return None
        reply = None
        if row["status"] == "done":
            reply = Reply(int(row["response_code"]), json.loads(row["response_body"]))
        return KeyRecord(row["key"], row["fingerprint"], row["status"] == "in_flight", reply,
                         row["created_at"], row["expires_at"])

    def save_response(self, key: str, fingerprint: str, reply: Reply) -> None:
        """Store the response for ``key`` durably (insert or overwrite), status ``done``."""
        now = self.clock()
        status, body = int(reply[0]), reply[1]
        with self._connect() as db:
            db.execute(
                "INSERT INTO idempotency_keys VALUES (?, ?, 'done', ?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status = 'done', fingerprint = excluded.fingerprint, "
                "response_code = excluded.response_code, response_body = excluded.response_body",
                (key, fingerprint, status, json.dumps(body), now, now + self.key_ttl))

    def release_key(self, key: str) -> None:
        """Forget a claim whose request failed before charging, so a retry can run."""
        with self._connect() as db:
            db.execute("DELETE FROM idempotency_keys WHERE key = ? AND status = 'in_flight'",
                       (key,))

    def purge_expired(self) -> int:
        """Delete expired keys (a reaper would run this periodically); returns how many."""
        with self._connect() as db:
            return db.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?",
                              (self.clock(),)).rowcount


# A charge handler: (ledger, Idempotency-Key or None, request) -> Reply. The payment
# service calls it for every POST /charges; the exercise asks you to write one.
ChargeHandler = Callable[[Ledger, "str | None", ChargeRequest], Reply]


def naive_charge(ledger: Ledger, key: str | None, request: ChargeRequest) -> Reply:
    """Charges on every request and ignores the key: the handler behind the double charge."""
    return Reply(201, ledger.charge(request, key=key))


# =====================================================================================
# 3. Serving FastAPI apps on 127.0.0.1 from a notebook
# =====================================================================================
# labsupport/servers.py does it (notebooks 03 and 06 use it too): a uvicorn server in a
# background thread on a free loopback port, registered by name so a re-run replaces it.
# The notebook calls api.serve, api.running_servers and api.stop_all.
ServerHandle = servers.ServerHandle
serve = servers.serve
running_servers = servers.running_servers
stop_all = servers.stop_all


# =====================================================================================
# 4. The payment service
# =====================================================================================


@dataclass
class Faults:
    """The fault switch: ``lose_next`` responses are committed, then never delivered."""

    lose_next: int = 0
    hold_seconds: float = 30.0  # a lost response is held until the client gives up
    lost: int = 0  # how many responses were lost so far
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self) -> bool:
        """True if this response is to be lost (and count it)."""
        with self._lock:
            if self.lose_next > 0:
                self.lose_next -= 1
                self.lost += 1
                return True
            return False


def parse_idempotency_key(raw: str | None) -> str | None:
    """The key from an ``Idempotency-Key`` header. The IETF draft makes it a Structured
    Field string (``"abc"``, quoted); bare tokens are accepted too, as Stripe does."""
    if raw is None:
        return None
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return raw or None


def _parse_charge(body: Any) -> ChargeRequest:
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    order_id, amount, currency = body.get("order_id"), body.get("amount_cents"), body.get("currency", "eur")
    if not isinstance(order_id, str) or not order_id:
        raise ValueError("order_id must be a non-empty string")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise ValueError("amount_cents must be a positive integer")
    if not isinstance(currency, str) or len(currency) != 3:
        raise ValueError("currency must be a 3-letter code")
    return ChargeRequest(order_id, amount, currency.lower())


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    # RFC 9457 problem details
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


class HandlerError(NamedTuple):
    """One request the charge handler failed: it raised, or returned something that is
    not a ``Reply(status, dict)``. Either way the client got a 500."""

    text: str  # one line: the exception and where it happened
    returned: Any = None  # the bad return value (None when the handler raised)
    raised: bool = True  # False: the handler returned, the service could not use the value


def _handler_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The last traceback frame in the handler's own code: not this module, not the
    standard library or an installed package."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames
           if f.filename != __file__ and not f.filename.startswith(prefixes)]
    return own[-1] if own else None


def describe_handler_exception(exc: BaseException) -> str:
    """One line naming the exception and the line of the handler it came from."""
    text = ex.describe_exception(exc)  # names a notebook cell's line when there is one
    frame = _handler_frame(exc)
    if text == f"{type(exc).__name__}: {exc}" and frame is not None:
        text += f" (in {frame.name}, line {frame.lineno}: {(frame.line or '').strip()})"
    return text


class PaymentService:
    """The payment service: a FastAPI app around a :class:`Ledger` and a charge handler."""

    def __init__(self, ledger: Ledger, handler: ChargeHandler) -> None:
        self.ledger = ledger
        self.handler = handler
        self.faults = Faults()
        self.failures: list[HandlerError] = []  # requests the handler failed, in order
        self.app = self._build_app()

    @property
    def errors(self) -> list[str]:
        """What the handler did wrong, one line per failed request."""
        return [f.text for f in self.failures]

    def _fail(self, failure: HandlerError) -> JSONResponse:
        self.failures.append(failure)  # list.append is atomic: handler threads may race here
        return _problem(500, "Internal Server Error", failure.text)

    def _call_handler(self, key: str | None, request: ChargeRequest) -> JSONResponse:
        try:
            reply = self.handler(self.ledger, key, request)
        except Exception as exc:  # noqa: BLE001 - a handler bug is a 500, and is reported
            return self._fail(HandlerError(describe_handler_exception(exc)))
        try:
            status, body = reply  # a Reply or any (status, body) pair
            status = int(status)
            valid = 100 <= status <= 599 and isinstance(body, dict)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            name = getattr(self.handler, "__name__", "the handler")
            return self._fail(HandlerError(
                f"TypeError: {name} returned {reply!r:.80}, not Reply(status, dict) "
                "(the payment service could not send it)", reply, raised=False))
        return JSONResponse(body, status_code=status)

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Payment service", description="Charges cards; honours Idempotency-Key.")

        @app.post("/charges")
        async def create_charge(request: Request) -> Any:
            raw_key = request.headers.get("idempotency-key")
            key = parse_idempotency_key(raw_key)
            if key is not None and len(key) > MAX_KEY_LENGTH:
                return _problem(400, "Bad Request", f"Idempotency-Key longer than {MAX_KEY_LENGTH} characters")
            try:
                charge = _parse_charge(json.loads(await request.body() or b"null"))
            except (ValueError, json.JSONDecodeError) as exc:
                return _problem(400, "Bad Request", f"invalid charge request: {exc}")
            response = await run_in_threadpool(self._call_handler, key, charge)
            if self.faults.take():
                # The charge is committed; now the response gets lost on the way back.
                deadline = time.monotonic() + self.faults.hold_seconds
                while time.monotonic() < deadline and not await request.is_disconnected():
                    await asyncio.sleep(0.02)
            return response

        @app.get("/charges")
        def list_charges(order_id: str | None = None) -> list[dict[str, Any]]:
            return self.ledger.charges(order_id)

        @app.post("/faults")
        def set_faults(body: dict[str, Any]) -> dict[str, Any]:
            n = body.get("lose_next", 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return _problem(400, "Bad Request", "lose_next must be a non-negative integer")
            self.faults.lose_next = n
            return {"lose_next": self.faults.lose_next, "lost": self.faults.lost}

        @app.get("/health")
        def health() -> dict[str, Any]:
            return {"status": "ok", "charges": self.ledger.count_charges()}

        return app


def start_payment_service(ledger: Ledger, handler: ChargeHandler = naive_charge,
                          name: str = "payments") -> tuple[PaymentService, ServerHandle]:
    """Build the payment service and serve it on a free port (replacing one of that name)."""
    service = PaymentService(ledger, handler)
    return service, serve(service.app, name)


# =====================================================================================
# 5. A client with timeouts and retries
# =====================================================================================

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
            delay = backoff_delay(n, policy.strategy, policy.base, policy.cap, rng) if retry and not last else 0.0
            attempts.append(Attempt(n + 1, outcome, took, delay))
            if not retry:
                break
            if delay:
                sleep(delay)
    finally:
        if own:
            client.close()
    return CallResult(response, attempts)


# =====================================================================================
# 6. The order service: a synchronous path and an asynchronous one
# =====================================================================================


@dataclass
class Order:
    order_id: str
    amount_cents: int
    status: str = "pending"  # pending -> paid | failed
    accepted_at: float = 0.0  # seconds (time.monotonic in the service)
    started_at: float = 0.0
    finished_at: float = 0.0
    charge_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "amount_cents": self.amount_cents,
                "status": self.status, "charge_id": self.charge_id, "detail": self.detail,
                "work_seconds": round(self.finished_at - self.started_at, 4) if self.finished_at else None}


class OrderService:
    """Places orders: checks stock and fraud (``work_seconds`` of simulated work), then
    charges through the payment service with retries and an idempotency key per order."""

    def __init__(self, payment_url: str, *, work_seconds: float = 0.3,
                 policy: RetryPolicy = RetryPolicy(timeout=2.0), workers: int = 4) -> None:
        self.payment_url = payment_url.rstrip("/")
        self.work_seconds = work_seconds
        self.policy = policy
        self.orders: dict[str, Order] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order-worker")
        self.app = self._build_app()

    def _new_order(self, body: Any) -> Order:
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        amount = body.get("amount_cents")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount_cents must be a positive integer")
        order = Order("ord_" + uuid.uuid4().hex[:12], amount, accepted_at=time.monotonic())
        with self._lock:
            self.orders[order.order_id] = order
        return order

    def _fulfil(self, order: Order) -> Order:
        """The work itself: checks, then the charge. Runs in the caller's request (sync)
        or in a background worker (async)."""
        order.started_at = time.monotonic()
        time.sleep(self.work_seconds)  # stock and fraud checks
        result = post_with_retries(f"{self.payment_url}/charges",
                                   {"order_id": order.order_id, "amount_cents": order.amount_cents},
                                   key=f"order-{order.order_id}", policy=self.policy)
        if result.status == 201 or result.status == 200:
            order.status, order.charge_id = "paid", result.response.json().get("charge_id")
        else:
            order.status, order.detail = "failed", result.log()
        order.finished_at = time.monotonic()
        return order

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Order service")

        @app.post("/orders", status_code=201)
        def place_order_sync(body: dict[str, Any]) -> Any:
            try:
                order = self._new_order(body)
            except ValueError as exc:
                return _problem(400, "Bad Request", str(exc))
            order = self._fulfil(order)  # the caller waits for all of it
            return JSONResponse(order.as_dict(), status_code=201 if order.status == "paid" else 502)

        @app.post("/orders/async", status_code=202)
        def place_order_async(body: dict[str, Any]) -> Any:
            try:
                order = self._new_order(body)
            except ValueError as exc:
                return _problem(400, "Bad Request", str(exc))
            self._pool.submit(self._fulfil, order)  # the work happens after we answer
            return JSONResponse(order.as_dict(), status_code=202,
                                headers={"Location": f"/orders/{order.order_id}",
                                         "Retry-After": "1"})  # whole seconds, per RFC 9110

        @app.get("/orders/{order_id}")
        def order_status(order_id: str) -> Any:
            order = self.orders.get(order_id)
            if order is None:
                return _problem(404, "Not Found", f"no order {order_id}")
            return order.as_dict()

        return app

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def start_order_service(payment_url: str, *, work_seconds: float = 0.3,
                        name: str = "orders") -> tuple[OrderService, ServerHandle]:
    """Build the order service and serve it; stopping the server also stops its workers."""
    service = OrderService(payment_url, work_seconds=work_seconds)
    return service, serve(service.app, name, on_stop=service.close)


@dataclass(frozen=True)
class PathTiming:
    """What one order cost on one path. Seconds."""

    path: str  # "sync" or "async"
    caller_waits: float  # until the caller got its first answer (201 or 202)
    until_done: float  # until the caller knew the order was paid
    work: float  # the work itself, as the service measured it
    polls: int  # GET requests on the status URL (0 on the sync path)


def order_sync(base_url: str, amount_cents: int, client: httpx.Client) -> PathTiming:
    """Place one order on the synchronous path and time it."""
    started = time.perf_counter()
    r = client.post(f"{base_url}/orders", json={"amount_cents": amount_cents}, timeout=30)
    waited = time.perf_counter() - started
    r.raise_for_status()
    return PathTiming("sync", waited, waited, r.json()["work_seconds"], 0)


def order_async(base_url: str, amount_cents: int, client: httpx.Client,
                poll_every: float = 0.05, timeout: float = 30.0) -> PathTiming:
    """Place one order on the asynchronous path: 202 + Location, then poll the status URL."""
    started = time.perf_counter()
    r = client.post(f"{base_url}/orders/async", json={"amount_cents": amount_cents}, timeout=30)
    accepted = time.perf_counter() - started
    if r.status_code != 202:
        raise RuntimeError(f"expected 202 Accepted, got {r.status_code}: {r.text[:200]}")
    status_url = base_url + r.headers["Location"]
    polls = 0
    while True:  # a real client would honour Retry-After; we poll faster to keep the demo short
        time.sleep(poll_every)
        polls += 1
        state = client.get(status_url, timeout=30).json()
        if state["status"] != "pending":
            break
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"order still pending after {timeout} s")
    return PathTiming("async", accepted, time.perf_counter() - started, state["work_seconds"], polls)


# =====================================================================================
# 7. The exercise checker
# =====================================================================================

CHECK_PROCESSOR_DELAY = 0.05  # seconds per charge: long enough for check-then-insert to race
LOST_RESPONSE_TIMEOUT = 0.5  # seconds the checker's client waits before it gives up
NORMAL_TIMEOUT = 20.0  # seconds for every other request: generous, the machine may be busy


def _post(client: httpx.Client, url: str, request: ChargeRequest, key: str | None,
          timeout: float = NORMAL_TIMEOUT) -> httpx.Response | str:
    headers = {"Idempotency-Key": f'"{key}"'} if key is not None else {}
    try:
        return client.post(f"{url}/charges", json=request.as_dict(), headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return f"connection error ({type(exc).__name__})"


def _describe(r: httpx.Response | str) -> str:
    if isinstance(r, str):
        return r
    try:
        body = r.json()
    except ValueError:
        body = r.text[:80]
    if isinstance(body, dict) and "charge_id" in body:
        return f"{r.status_code} {body['charge_id']}"
    return f"{r.status_code}"


def _errors_note(failures: list[HandlerError]) -> str:
    """The handler's failures during one row's requests (not earlier rows')."""
    if not failures:
        return ""
    times = f" ({len(failures)} requests)" if len(failures) > 1 else ""
    verb = "raised" if failures[0].raised else "failed"
    return f"; your handler {verb}{times}: {failures[0].text}"


def _hint(failures: list[HandlerError], hint: str, in_flight: bool = False) -> str:
    """The row's own hint, unless the handler failed during it: then name what failed."""
    if not failures:
        return hint
    first = failures[0]
    if first.raised:
        return (f"Your handler raised {first.text}, so the service answered 500 Internal "
                "Server Error. Fix that first.")
    text = (f"TypeError: your handler returned {first.returned!r:.40} where the payment "
            "service needs Reply(status, dict), so it answered 500 Internal Server Error. "
            "Every path of the handler must return a Reply.")
    if in_flight and first.returned is None:
        text += (" A retry that arrives while the first request is still in flight finds "
                 "record.in_flight True and record.reply None: answer 409 Conflict then.")
    return text


def _charge_id(r: httpx.Response | str) -> str | None:
    if isinstance(r, str) or r.status_code >= 300:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("charge_id") if isinstance(body, dict) else None


def _check_lost_response(url: str, service: PaymentService, client: httpx.Client,
                         rng: np.random.Generator) -> ex.Check:
    n = int(rng.integers(10, 99))
    key, req = f"k-{n}", ChargeRequest(f"order-{n}", int(rng.integers(500, 9000)))
    start = len(service.failures)
    service.faults.lose_next = 1
    first = _post(client, url, req, key, timeout=LOST_RESPONSE_TIMEOUT)
    retries = [_post(client, url, req, key) for _ in range(2)]
    failures = service.failures[start:]
    charges = service.ledger.charges(req.order_id)
    ids = [_charge_id(r) for r in retries]
    replayed = (len(charges) == 1 and all(i == charges[0]["charge_id"] for i in ids)
                and all(not isinstance(r, str) and r.status_code == retries[0].status_code
                        for r in retries))
    found = (f"{len(charges)} charge(s) for key {key}; first attempt: {_describe(first)}; "
             f"retries got: {', '.join(_describe(r) for r in retries)}" + _errors_note(failures))
    return ex.Check("lost response, then 2 retries", len(charges) == 1 and replayed,
                    "exactly 1 charge; each retry replays the original response (same charge_id)",
                    found, hint=_hint(failures, "Store the first response under the key and "
                                                "return it on a retry instead of charging again."))


def _check_concurrent(url: str, service: PaymentService, rng: np.random.Generator,
                      parallel: int = 20) -> ex.Check:
    n = int(rng.integers(100, 999))
    key, req = f"k-{n}", ChargeRequest(f"order-{n}", int(rng.integers(500, 9000)))
    barrier = threading.Barrier(parallel)

    def one(_: int) -> httpx.Response | str:
        with httpx.Client() as c:
            barrier.wait(timeout=NORMAL_TIMEOUT)  # release all requests at once
            return _post(c, url, req, key)

    start = len(service.failures)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = list(pool.map(one, range(parallel)))
    failures = service.failures[start:]
    charges = service.ledger.charges(req.order_id)
    codes: dict[str, int] = {}
    for r in results:
        label = r if isinstance(r, str) else str(r.status_code)
        codes[label] = codes.get(label, 0) + 1
    ids = {_charge_id(r) for r in results} - {None}
    consistent = len(charges) == 1 and ids == {charges[0]["charge_id"]} and all(
        not isinstance(r, str) and (r.status_code == 409 or _charge_id(r) == charges[0]["charge_id"])
        for r in results)
    found = (f"{len(charges)} charge(s) for key {key}; responses: "
             + ", ".join(f"{v}x {k}" for k, v in sorted(codes.items())) + _errors_note(failures))
    return ex.Check(f"{parallel} concurrent requests, one key", consistent,
                    "exactly 1 charge; every response is the original or 409 Conflict", found,
                    hint=_hint(failures, "Checking for the key and then inserting it is a race: "
                                         "claim the key with ledger.claim_key (one atomic INSERT) "
                                         "and act on what it returns.", in_flight=True))


def _check_mismatch(url: str, service: PaymentService, client: httpx.Client,
                    rng: np.random.Generator) -> ex.Check:
    n = int(rng.integers(1000, 9999))
    key = f"k-{n}"
    first = ChargeRequest(f"order-{n}", 1500)
    other = ChargeRequest(f"order-{n}", 2500)  # same key, another amount
    start = len(service.failures)
    r1 = _post(client, url, first, key)
    r2 = _post(client, url, other, key)
    failures = service.failures[start:]
    charges = service.ledger.charges(first.order_id)
    status = None if isinstance(r2, str) else r2.status_code
    ok = status == 422 and len(charges) == 1 and _charge_id(r1) == charges[0]["charge_id"]
    return ex.Check("same key, different amount", ok,
                    "first 201 with a charge; second 422 and no new charge",
                    f"first: {_describe(r1)}; second: {_describe(r2)}; {len(charges)} charge(s) for "
                    f"key {key}" + _errors_note(failures),
                    hint=_hint(failures, "Compare the stored fingerprint with "
                                         "api.fingerprint(request)."))


def _check_missing_key(url: str, service: PaymentService, client: httpx.Client,
                       rng: np.random.Generator) -> ex.Check:
    n = int(rng.integers(10000, 99999))
    req = ChargeRequest(f"order-{n}", 990)
    start = len(service.failures)
    r = _post(client, url, req, None)
    failures = service.failures[start:]
    charges = service.ledger.count_charges(req.order_id)
    status = None if isinstance(r, str) else r.status_code
    return ex.Check("no Idempotency-Key header", status == 400 and charges == 0,
                    "400 Bad Request and no charge",
                    f"{_describe(r)}; {charges} charge(s)" + _errors_note(failures),
                    hint=_hint(failures, "key is None when the header is missing: answer 400 "
                                         "before touching the ledger."))


def _check_distinct_keys(url: str, service: PaymentService, client: httpx.Client,
                         rng: np.random.Generator) -> ex.Check:
    n = int(rng.integers(100000, 999999))
    req = ChargeRequest(f"order-{n}", 700)
    start = len(service.failures)
    rs = [_post(client, url, req, f"k-{n}-{i}") for i in range(2)]
    failures = service.failures[start:]
    charges = service.ledger.count_charges(req.order_id)
    ok = charges == 2 and all(not isinstance(r, str) and r.status_code == 201 for r in rs)
    return ex.Check("two different keys", ok, "2 charges, each answered 201 Created",
                    f"{', '.join(_describe(r) for r in rs)}; {charges} charge(s)" + _errors_note(failures),
                    hint=_hint(failures, "A new key is a new payment: charge it and answer 201 "
                                         "with the charge."))


def _check_restart(handler: ChargeHandler, db_path: Path, rng: np.random.Generator) -> ex.Check:
    n = int(rng.integers(10, 99))
    key, req = f"k-r{n}", ChargeRequest(f"order-r{n}", int(rng.integers(500, 9000)))
    ledger = Ledger(db_path, processor_delay=CHECK_PROCESSOR_DELAY)
    service, server = start_payment_service(ledger, handler, name="exercise-check")
    with httpx.Client() as client:
        try:
            service.faults.lose_next = 1
            first = _post(client, server.url, req, key, timeout=LOST_RESPONSE_TIMEOUT)
        finally:
            server.stop()  # the restart: process state is gone, only the SQLite file remains
        service2, server2 = start_payment_service(Ledger(db_path, processor_delay=CHECK_PROCESSOR_DELAY),
                                                  handler, name="exercise-check")
        try:
            retry = _post(client, server2.url, req, key)
        finally:
            server2.stop()
    charges = Ledger(db_path).charges(req.order_id)
    ok = len(charges) == 1 and _charge_id(retry) == charges[0]["charge_id"]
    failures = service.failures + service2.failures  # two fresh services: all of this row
    return ex.Check("service restart between attempts", ok,
                    "exactly 1 charge; the retry after the restart replays it",
                    f"{len(charges)} charge(s) for key {key}; first: {_describe(first)}; "
                    f"retry after restart: {_describe(retry)}" + _errors_note(failures),
                    hint=_hint(failures, "Keep keys and responses in the ledger (SQLite), not in "
                                         "Python memory."))


def _checks(answer: Any, seed: int = 1) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "your charge handler")
    if bad:
        return [bad]
    rng = np.random.default_rng(seed)
    workdir = Path(tempfile.mkdtemp(prefix="api-check-"))
    results: list[ex.Check] = []
    try:
        ledger = Ledger(workdir / "ledger.sqlite", processor_delay=CHECK_PROCESSOR_DELAY)
        service, server = start_payment_service(ledger, answer, name="exercise-check")
        try:
            with httpx.Client() as client:
                results.append(_check_lost_response(server.url, service, client, rng))
                results.append(_check_concurrent(server.url, service, rng))
                results.append(_check_mismatch(server.url, service, client, rng))
                results.append(_check_missing_key(server.url, service, client, rng))
                results.append(_check_distinct_keys(server.url, service, client, rng))
        finally:
            server.stop()
        results.append(_check_restart(answer, workdir / "restart.sqlite", rng))
    finally:
        servers.stop("exercise-check")
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's charge handler: serve it over HTTP and replay the double charge."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# =====================================================================================
# 8. From the shell
# =====================================================================================


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the payment service (curl it).")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", type=Path, default=Path.home() / ".labsupport" / "payments.sqlite",
                        help="the SQLite ledger (kept across restarts)")
    parser.add_argument("--handler", choices=("idempotent", "naive"), default="idempotent")
    parser.add_argument("--processor-delay", type=float, default=0.2, help="seconds per charge")
    args = parser.parse_args(argv)
    if args.handler == "idempotent":
        from labsupport.solutions.api_communication import idempotent_charge as handler
    else:
        handler = naive_charge
    service = PaymentService(Ledger(args.db, processor_delay=args.processor_delay), handler)
    print(f"payment service ({args.handler} handler), ledger {args.db}\n"
          f"  curl -i -X POST localhost:{args.port}/charges -H 'Content-Type: application/json' "
          f"-H 'Idempotency-Key: \"k-1\"' -d '{{\"order_id\": \"o-1\", \"amount_cents\": 1500}}'\n"
          f"  curl localhost:{args.port}/charges")
    uvicorn.run(service.app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
