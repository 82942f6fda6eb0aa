"""The scenario checker of ``01_api_communication.ipynb``: the double charge, replayed.

:func:`check_exercise` serves the learner's charge handler for real (the payment service
of ``labsupport/services/api_communication.py`` on 127.0.0.1) and drives it over HTTP: a
lost response and two retries, 20 concurrent requests with one key, the same key with
another amount, no key, two keys, and a service restart between attempts. Each row is
judged on its own; :func:`run_row` runs one row without that safety net, so a failure
shows its full traceback.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from labsupport import exercises as ex
from labsupport import servers
from labsupport.api_communication import ChargeHandler, ChargeRequest, Ledger
from labsupport.services.api_communication import (
    HandlerError,
    PaymentService,
    start_payment_service,
)

EXERCISE_ID = "01_api_communication"

CHECK_PROCESSOR_DELAY = 0.05  # seconds per charge: long enough for check-then-insert to race
LOST_RESPONSE_TIMEOUT = 0.5  # seconds the checker's client waits before it gives up
NORMAL_TIMEOUT = 20.0  # seconds for every other request: generous, the machine may be busy
PARALLEL = 20  # requests with one key, released together


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
                         rng: np.random.Generator, n: int) -> ex.Check:
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


def _check_concurrent(url: str, service: PaymentService, rng: np.random.Generator, n: int,
                      parallel: int = PARALLEL) -> ex.Check:
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
                    n: int) -> ex.Check:
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
                       n: int) -> ex.Check:
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
                         n: int) -> ex.Check:
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


def _check_restart(handler: ChargeHandler, db_path: Path, rng: np.random.Generator,
                   n: int) -> ex.Check:
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

# The rows, in the order they run; each is also the ``row`` argument of :func:`run_row`.
ROWS = ("lost response, then 2 retries", f"{PARALLEL} concurrent requests, one key",
        "same key, different amount", "no Idempotency-Key header", "two different keys",
        "service restart between attempts")

Case = tuple[str, str, Callable[[], ex.Check]]  # row name, its input, the row itself


def _cases(answer: ChargeHandler, seed: int) -> Iterator[Case]:
    """The rows of one check run, lazily: the first five share one payment service, the
    restart row has its own. Closing the generator stops the servers and deletes the
    ledgers. The random draws happen in this order whichever rows are judged."""
    rng = np.random.default_rng(seed)
    workdir = Path(tempfile.mkdtemp(prefix="api-check-"))
    try:
        ledger = Ledger(workdir / "ledger.sqlite", processor_delay=CHECK_PROCESSOR_DELAY)
        service, server = start_payment_service(ledger, answer, name="exercise-check")
        url = server.url
        try:
            with httpx.Client() as client:
                n = int(rng.integers(10, 99))
                yield (ROWS[0], f"key k-{n}, order order-{n}, the first response lost",
                       lambda n=n: _check_lost_response(url, service, client, rng, n))
                n = int(rng.integers(100, 999))
                yield (ROWS[1], f"key k-{n}, order order-{n}, {PARALLEL} requests released at once",
                       lambda n=n: _check_concurrent(url, service, rng, n))
                n = int(rng.integers(1000, 9999))
                yield (ROWS[2], f"key k-{n}, order order-{n}: 1500 cents, then 2500",
                       lambda n=n: _check_mismatch(url, service, client, n))
                n = int(rng.integers(10000, 99999))
                yield (ROWS[3], f"order order-{n}, no Idempotency-Key header",
                       lambda n=n: _check_missing_key(url, service, client, n))
                n = int(rng.integers(100000, 999999))
                yield (ROWS[4], f"keys k-{n}-0 and k-{n}-1, order order-{n}",
                       lambda n=n: _check_distinct_keys(url, service, client, n))
        finally:
            server.stop()
        n = int(rng.integers(10, 99))
        yield (ROWS[5], f"key k-r{n}, order order-r{n}, the first response lost, then a restart",
               lambda n=n: _check_restart(answer, workdir / "restart.sqlite", rng, n))
    finally:
        servers.stop("exercise-check")
        shutil.rmtree(workdir, ignore_errors=True)


def _checks(answer: Any, seed: int = 1) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "your charge handler")
    if bad:
        return [bad]
    seed_arg = "" if seed == 1 else f", seed={seed}"
    return [ex.judge(name, run, case=f"{case} (seed {seed})",
                     reproduce=f'checks.run_row(my_answer, "{name}"{seed_arg})')
            for name, case, run in _cases(answer, seed)]


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's charge handler: serve it over HTTP and replay the double charge."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


def run_row(answer: ChargeHandler, row: str, seed: int = 1) -> ex.Check:
    """Run the check run up to ``row`` (a part of its name, see :data:`ROWS`) and return
    that row's verdict; unlike :func:`check_exercise`, an exception in that row is raised,
    with its full traceback. The rows before it run too (their verdicts are dropped), so
    the row sees exactly the inputs and the ledger it sees in the full check."""
    matches = [name for name in ROWS if row in name]
    if len(matches) != 1:
        raise ValueError(f"row {row!r} names {len(matches)} rows; use a part of one of {ROWS}")
    cases = _cases(answer, seed)
    try:
        for name, _case, run in cases:
            if name == matches[0]:
                return run()
            try:
                run()
            except Exception:  # noqa: BLE001 - an earlier row's failure is not this row's
                pass
    finally:
        cases.close()
    raise AssertionError("unreachable: every row in ROWS is yielded")
