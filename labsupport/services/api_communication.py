"""HTTP services of ``01_api_communication.ipynb``: the payment service and the order service.

Both are FastAPI apps served by uvicorn on 127.0.0.1 (a free port, through
``labsupport/servers.py``):

* the payment service, whose charge handler is pluggable (``(ledger, key, request) ->
  Reply``, see ``labsupport/api_communication.py``) and which has a fault switch that
  commits the charge and then loses the response;
* the order service, with a synchronous path (``201`` when the work is done) and an
  asynchronous one (``202 Accepted`` + ``Location`` to poll), and the two clients that
  time them (:func:`order_sync`, :func:`order_async`).

From a shell, ``python -m labsupport.services.api_communication --port 8000`` serves the
payment service with the reference (idempotent) handler, so it can be hit with curl.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labsupport import api_communication as api
from labsupport import exercises as ex
from labsupport import servers
from labsupport.api_communication import (
    MAX_KEY_LENGTH,
    ChargeHandler,
    ChargeRequest,
    Ledger,
    RetryPolicy,
    naive_charge,
    post_with_retries,
)

# --- Serving FastAPI apps on 127.0.0.1 from a notebook ------------------------------
# labsupport/servers.py does it (notebooks 03 and 06 use it too): a uvicorn server in a
# background thread on a free loopback port, registered by name so a re-run replaces it.
# The notebook calls services.running_servers and services.stop_all.
ServerHandle = servers.ServerHandle
serve = servers.serve
running_servers = servers.running_servers
stop_all = servers.stop_all


# --- The payment service ------------------------------------------------------------


@dataclass
class Faults:
    """The fault switches, each for the next ``n`` charges (POST /faults sets them)."""

    lose_next: int = 0  # responses committed, then never delivered
    fail_charges: int = 0  # the card network is down: the next charges fail, nothing taken
    crash_after: str | None = None  # SIGKILL the process when a charge gets past this point
    hold_seconds: float = 30.0  # a lost response is held until the client gives up
    lost: int = 0  # how many responses were lost so far
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, switch: str = "lose_next") -> bool:
        """True if this response (or charge) is to be lost (or fail), and count it down."""
        with self._lock:
            if getattr(self, switch) > 0:
                setattr(self, switch, getattr(self, switch) - 1)
                self.lost += switch == "lose_next"
                return True
            return False


class CardNetworkDown(RuntimeError):
    """The card network refused the charge before taking any money (a fault switch)."""


# --- Crashes: the process dies at a chosen point of a charge ------------------------

CRASH_POINTS = ("claim", "charge", "response")  # after the key is claimed, after the card
# network charged, after the payment and response were stored: where a crash can leave a key


class FaultyLedger(Ledger):
    """The ledger a payment service hands its handler, with the fault switches applied:
    the card network can be down, and (in a service process of its own, never in the
    notebook's kernel) the process can be killed with SIGKILL, no cleanup and no finally,
    as a power cut or an OOM kill does, the first time a charge gets past a crash point."""

    def __init__(self, path: str | Path, faults: Faults, own_process: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.faults, self.own_process = faults, own_process

    def _maybe_die(self, point: str) -> None:
        if self.own_process and self.faults.crash_after == point:
            os.kill(os.getpid(), signal.SIGKILL)

    def claim(self, key: str, fingerprint: str) -> api.Outcome:
        outcome = super().claim(key, fingerprint)
        if outcome == "claimed":
            self._maybe_die("claim")
        return outcome

    def charge(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.faults.take("fail_charges"):
            raise CardNetworkDown("the card network did not answer; nothing was charged")
        charge = super().charge(*args, **kwargs)
        self._maybe_die("charge")
        return charge

    def finish(self, *args: Any, **kwargs: Any) -> None:
        super().finish(*args, **kwargs)
        self._maybe_die("response")


def parse_idempotency_key(raw: str | None) -> str | None:
    """The key from an ``Idempotency-Key`` header. The IETF draft makes it a Structured
    Field string (``"abc"``, quoted); bare tokens are accepted too, as Stripe does."""
    if raw is None:
        return None
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return raw or None


class ChargeBody(BaseModel):
    """The body of ``POST /charges``, as ``/openapi.json`` and ``/docs`` describe it."""

    model_config = ConfigDict(strict=True)  # "1500" is not 1500, true is not 1

    order_id: str = Field(min_length=1, examples=["o-1"])
    amount_cents: int = Field(gt=0, description="integer cents: money is never a float",
                              examples=[1500])
    currency: str = Field("eur", pattern="^[A-Za-z]{3}$", description="ISO 4217 code")


class OrderBody(BaseModel):
    """The body of ``POST /orders`` and ``POST /orders/async``."""

    model_config = ConfigDict(strict=True)

    amount_cents: int = Field(gt=0, description="integer cents", examples=[1500])


def _validated(model: type[BaseModel], raw: bytes) -> Any:
    """``model`` read from a raw JSON body; ValueError names the first problem."""
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ValueError(f"{where}: {first['msg']}") from None


def _parse_charge(raw: bytes) -> ChargeRequest:
    """The charge in a raw request body; ValueError names the first problem."""
    body = _validated(ChargeBody, raw)
    return ChargeRequest(body.order_id, body.amount_cents, body.currency.lower())


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}}}


# The handlers read the raw body themselves (a bad body is a 400 problem, not FastAPI's
# 422), so the schemas are declared for /openapi.json and /docs here.
ORDER_OPENAPI = {"requestBody": _json_body(OrderBody)}
CHARGE_OPENAPI = {
    "requestBody": _json_body(ChargeBody),
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                    "description": "a unique key per payment (quoted Structured Field string or "
                                   "bare token, at most 255 characters); required by the "
                                   "idempotent handler",
                    "schema": {"type": "string", "maxLength": MAX_KEY_LENGTH}}],
}


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    # RFC 9457 problem details
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type="application/problem+json")


# Frames in these files are the course's, not the handler's (a handler calls the ledger).
_OWN_FILES = frozenset({__file__, api.__file__})


def _handler_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The last traceback frame in the handler's own code: not this module or the ledger's,
    not the standard library or an installed package."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames
           if f.filename not in _OWN_FILES and not f.filename.startswith(prefixes)]
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

    def __init__(self, ledger: Ledger, handler: ChargeHandler, own_process: bool = False) -> None:
        self.faults = Faults()
        self.ledger = FaultyLedger(ledger.path, self.faults, own_process, key_ttl=ledger.key_ttl,
                                   lease=ledger.lease, processor_delay=ledger.processor_delay,
                                   clock=ledger.clock)
        self.handler = handler
        self.app = self._build_app()

    @staticmethod
    def _fail(text: str) -> JSONResponse:
        """A 500 that names the handler's mistake (it raised, or returned no Reply): the
        client, and the checks, read it in the problem's ``detail``."""
        return _problem(500, "Internal Server Error", text)

    def _call_handler(self, key: str | None, request: ChargeRequest) -> JSONResponse:
        try:
            reply = self.handler(self.ledger, key, request)
        except Exception as exc:  # noqa: BLE001 - a handler bug is a 500, and is reported
            if self.ledger.own_process:  # the log the checks' run_row prints
                traceback.print_exc()
            return self._fail(describe_handler_exception(exc))
        try:
            status, body = reply  # a Reply or any (status, body) pair
            status = int(status)
            valid = 100 <= status <= 599 and isinstance(body, dict)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            name = getattr(self.handler, "__name__", "the handler")
            return self._fail(f"TypeError: {name} returned {reply!r:.80}, not Reply(status, dict) "
                              "(the payment service could not send it)")
        return JSONResponse(body, status_code=status)

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Payment service", description="Charges cards; honours Idempotency-Key.")

        @app.post("/charges", openapi_extra=CHARGE_OPENAPI)
        async def create_charge(request: Request) -> Any:
            raw_key = request.headers.get("idempotency-key")
            key = parse_idempotency_key(raw_key)
            if key is not None and len(key) > MAX_KEY_LENGTH:
                return _problem(400, "Bad Request", f"Idempotency-Key longer than {MAX_KEY_LENGTH} characters")
            try:
                charge = _parse_charge(await request.body())
            except ValueError as exc:
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
        def set_faults(body: dict[str, Any]) -> Any:
            counts = {k: body[k] for k in ("lose_next", "fail_charges") if k in body}
            if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts.values()):
                return _problem(400, "Bad Request", "lose_next and fail_charges are integers >= 0")
            crash = body.get("crash_after")
            if crash is not None and (crash not in CRASH_POINTS or not self.ledger.own_process):
                return _problem(400, "Bad Request", f"crash_after is one of {CRASH_POINTS}, and "
                                "only for a service in a process of its own")
            for name, n in counts.items():
                setattr(self.faults, name, n)
            if "crash_after" in body:
                self.faults.crash_after = crash
            return {"lose_next": self.faults.lose_next, "fail_charges": self.faults.fail_charges,
                    "crash_after": self.faults.crash_after, "lost": self.faults.lost}

        @app.get("/health")
        def health() -> dict[str, Any]:
            return {"status": "ok", "charges": len(self.ledger.charges())}

        return app


def start_payment_service(ledger: Ledger, handler: ChargeHandler = naive_charge,
                          name: str = "payments") -> tuple[PaymentService, ServerHandle]:
    """Build the payment service and serve it on a free port (replacing one of that name)."""
    service = PaymentService(ledger, handler)
    return service, serve(service.app, name)


# --- The order service: a synchronous path and an asynchronous one ------------------


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


ORDER_POLICY = RetryPolicy(timeout=2.0)  # the order service's charge retries (frozen: a safe default)


class OrderService:
    """Places orders: checks stock and fraud (``work_seconds`` of simulated work), then
    charges through the payment service with retries and an idempotency key per order."""

    def __init__(self, payment_url: str, *, work_seconds: float = 0.3,
                 policy: RetryPolicy = ORDER_POLICY, workers: int = 4) -> None:
        self.payment_url = payment_url.rstrip("/")
        self.work_seconds = work_seconds
        self.policy = policy
        self.orders: dict[str, Order] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order-worker")
        self.app = self._build_app()

    def _new_order(self, raw: bytes) -> Order:
        body = _validated(OrderBody, raw)
        order = Order("ord_" + uuid.uuid4().hex[:12], body.amount_cents,
                      accepted_at=time.monotonic())
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

        @app.post("/orders", status_code=201, openapi_extra=ORDER_OPENAPI)
        async def place_order_sync(request: Request) -> Any:
            try:
                order = self._new_order(await request.body())
            except ValueError as exc:
                return _problem(400, "Bad Request", str(exc))
            order = await run_in_threadpool(self._fulfil, order)  # the caller waits for all of it
            return JSONResponse(order.as_dict(), status_code=201 if order.status == "paid" else 502)

        @app.post("/orders/async", status_code=202, openapi_extra=ORDER_OPENAPI)
        async def place_order_async(request: Request) -> Any:
            try:
                order = self._new_order(await request.body())
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


# --- The payment service as a process of its own (a real restart, a real SIGKILL) ---

START_TIMEOUT = 60.0  # seconds for a new service process to answer /health (a busy machine)


def start_payment_process(db: Path, *, handler_payload: Path | None = None,
                          lease: float = api.KEY_LEASE, processor_delay: float = 0.05,
                          crash_after: str | None = None,
                          log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m labsupport.services.api_communication`` on ``db`` and a free port;
    return the process and its URL once it answers. ``handler_payload``: a pickled
    :func:`labsupport.fresh_process.program` of the charge handler (default: the answer
    key's). The caller kills the process; ``log`` collects what it prints."""
    port_file = db.with_name(f"{db.stem}-{uuid.uuid4().hex[:8]}.port")
    command = [sys.executable, "-m", __name__, "--port", "0", "--port-file", str(port_file),
               "--db", str(db), "--lease", str(lease), "--processor-delay", str(processor_delay),
               "--log-level", "warning"]
    if handler_payload is not None:
        command += ["--handler-payload", str(handler_payload)]
    if crash_after:
        command += ["--crash-after", crash_after]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,  # prints in order
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        if log:
            out.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if port_file.exists() and (text := port_file.read_text().strip()):
            url = f"http://127.0.0.1:{text}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    port_file.unlink()
                    return process, url
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the payment service process did not start (exit code {process.poll()})")


def crash_and_retry(folder: Path, point: str, *, lease: float = 1.0) -> dict[str, Any]:
    """The crash demo: a service process (the answer key's handler) is killed with SIGKILL
    the first time a charge gets past ``point``; a new process starts on the same ledger;
    the client retries with the same key until the answer is not 409. Returns what happened."""
    db, key = folder / f"crash-{point}.sqlite", f"k-crash-{point}"
    body = {"order_id": f"o-crash-{point}", "amount_cents": 4200}
    headers = {"Idempotency-Key": f'"{key}"'}
    crashing, url = start_payment_process(db, lease=lease, crash_after=point)
    try:
        httpx.post(f"{url}/charges", json=body, headers=headers, timeout=10)
        first = "answered (no crash)"
    except httpx.TransportError as exc:
        first = f"connection lost ({type(exc).__name__})"
    finally:
        crashing.kill()
        exit_code = crashing.wait(timeout=10)
    restarted, url = start_payment_process(db, lease=lease)
    try:
        started, conflicts = time.monotonic(), 0
        while (r := httpx.post(f"{url}/charges", json=body, headers=headers, timeout=10)
               ).status_code == 409 and time.monotonic() - started < lease + 30:
            conflicts += 1
            time.sleep(0.1)
        waited = time.monotonic() - started
        again = httpx.post(f"{url}/charges", json=body, headers=headers, timeout=10)
    finally:
        restarted.kill()
        restarted.wait(timeout=10)
    ledger = Ledger(db)
    return {"crash after": point, "first attempt": first, "exit code": exit_code,
            "409s after the restart": conflicts, "answered after (s)": waited,
            "retry": f"{r.status_code} {r.json().get('charge_id', '')}".strip(),
            "next retry": f"{again.status_code} {again.json().get('charge_id', '')}".strip(),
            "charges": len(ledger.charges(body["order_id"])),
            "payments": len(ledger.payments(body["order_id"]))}


def load_handler(payload_path: Path) -> ChargeHandler:
    """The charge handler rebuilt from a pickled :func:`fresh_process.program`."""
    import pickle

    from labsupport import fresh_process

    return fresh_process.rebuild(pickle.loads(payload_path.read_bytes()))


# --- From the shell -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the payment service (curl it).")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument("--port-file", type=Path, help="write the port here once serving")
    parser.add_argument("--db", type=Path, default=Path.home() / ".labsupport" / "payments.sqlite",
                        help="the SQLite ledger (kept across restarts)")
    parser.add_argument("--handler", choices=("idempotent", "naive"), default="idempotent")
    parser.add_argument("--handler-payload", type=Path,
                        help="a pickled fresh_process.program of a handler (the checks use it)")
    parser.add_argument("--processor-delay", type=float, default=0.2, help="seconds per charge")
    parser.add_argument("--lease", type=float, default=api.KEY_LEASE,
                        help="seconds before a retry may take over a claimed key")
    parser.add_argument("--crash-after", choices=CRASH_POINTS, default=None,
                        help="kill this process (SIGKILL) when the first charge gets there")
    parser.add_argument("--log-level", default="info", help="uvicorn's: info logs every request")
    args = parser.parse_args(argv)
    if args.handler_payload:
        handler = load_handler(args.handler_payload)
    elif args.handler == "idempotent":
        from labsupport.solutions.api_communication import idempotent_charge as handler
    else:
        handler = naive_charge
    ledger = Ledger(args.db, processor_delay=args.processor_delay, lease=args.lease)
    service = PaymentService(ledger, handler, own_process=True)
    service.faults.crash_after = args.crash_after
    server = serve(service.app, "payments", port=args.port, log_level=args.log_level)
    print(f"payment service, ledger {args.db}, on {server.url}\n"
          f"  curl -i -X POST {server.url}/charges -H 'Content-Type: application/json' "
          f"-H 'Idempotency-Key: \"k-1\"' -d '{{\"order_id\": \"o-1\", \"amount_cents\": 1500}}'\n"
          f"  curl {server.url}/charges", flush=True)
    if args.port_file:
        args.port_file.write_text(str(server.port))
    try:
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
