"""The checks of ``01_api_communication.ipynb``: four steps, the scenario, the review quiz.

The steps are judged in ``api_communication_steps.py``. The scenario, the double charge,
is replayed for real, and out of the learner's reach:

* the learner's charge handler is sent (its source and the names it uses, see
  :mod:`labsupport.fresh_process`) to **payment service processes of its own** on
  127.0.0.1, so no state in the kernel's memory survives their restart;
* the rows are driven and judged by a **judge process** that never runs the learner's
  code: it sends the requests, reads the SQLite ledger itself and sends back the verdict,
  so code run in the kernel cannot change how a row is judged.

The rows: a lost response and two retries, 20 concurrent requests with one key, the same
key with another amount, no key, two keys, the card network down for one charge, and a
SIGKILL right after the charge, then retries against a process that never saw the first
request. :func:`run_row` runs one row and prints what the service processes printed.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from labsupport import exercises as ex
from labsupport import fresh_process
from labsupport import quiz as qz
from labsupport.api_communication import ChargeRequest, Ledger
from labsupport.checks import api_communication_steps as steps
from labsupport.services.api_communication import start_payment_process

EXERCISE_ID = "01_api_communication"

CHECK_PROCESSOR_DELAY = 0.05  # seconds per charge: long enough for check-then-insert to race
CHECK_LEASE = 1.0  # seconds: the services' lease, so a takeover happens within the check
LOST_RESPONSE_TIMEOUT = 0.5  # seconds the checker's client waits before it gives up
NORMAL_TIMEOUT = 20.0  # seconds for every other request: generous, the machine may be busy
RECOVERY_WAIT = 30.0  # seconds of retrying after the crash before the row gives up
PARALLEL = 20  # requests with one key, released together
JUDGE_TIMEOUT = 300.0  # seconds for the whole judge process


# --- Steps -----------------------------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: backoff, 2: fingerprint, 3: claim, 4: finish)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


# --- The scenario: what one row sees -------------------------------------------------------

Response = httpx.Response | str  # a response, or what went wrong ("timeout", …)


def _post(client: httpx.Client, url: str, request: ChargeRequest, key: str | None,
          timeout: float = NORMAL_TIMEOUT) -> Response:
    headers = {"Idempotency-Key": f'"{key}"'} if key is not None else {}
    try:
        return client.post(f"{url}/charges", json=request.as_dict(), headers=headers,
                           timeout=timeout)
    except httpx.TimeoutException:
        return "timeout"
    except httpx.TransportError as exc:
        return f"connection error ({type(exc).__name__})"


def _charge_id(r: Response) -> str | None:
    if isinstance(r, str) or r.status_code >= 300:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("charge_id") if isinstance(body, dict) else None


def _describe(r: Response) -> str:
    charge_id = _charge_id(r)
    return r if isinstance(r, str) else f"{r.status_code}" + (f" {charge_id}" if charge_id else "")


def _handler_errors(responses: list[Response]) -> list[str]:
    """What the service said about the handler in its 500 answers (it raised, or returned
    something that is not a Reply)."""
    found = []
    for r in responses:
        if not isinstance(r, str) and r.status_code == 500:
            try:
                found.append(str(r.json().get("detail", "")))
            except ValueError:
                found.append(r.text[:120])
    return found


def _errors_note(errors: list[str]) -> str:
    if not errors:
        return ""
    times = f" ({len(errors)} requests)" if len(errors) > 1 else ""
    return f"; your handler failed{times}: {errors[0]}"


def _hint(errors: list[str], hint: str) -> str:
    """The row's own hint, unless the handler failed during it: then name what failed."""
    if not errors:
        return hint
    text = f"The service answered 500 Internal Server Error: {errors[0]}. Fix that first."
    if "returned None" in errors[0]:
        text += (" Every path of the handler must return a Reply; a retry that arrives while "
                 "the first request is in flight gets 'in_flight' from the claim: answer 409.")
    return text


class Target:
    """The service processes a row talks to, and the ledger they share."""

    def __init__(self, url: str, restarted_url: str, db: Path, client: httpx.Client,
                 crashing: subprocess.Popen) -> None:
        self.url, self.restarted_url, self.db, self.client = url, restarted_url, db, client
        self.crashing = crashing

    def faults(self, **switches: Any) -> None:
        r = self.client.post(f"{self.url}/faults", json=switches, timeout=NORMAL_TIMEOUT)
        r.raise_for_status()

    def charges(self, order_id: str) -> list[dict[str, Any]]:
        """Money taken, read from the ledger file (not from anything the handler says)."""
        return Ledger(self.db).charges(order_id)

    def payments(self, order_id: str) -> list[dict[str, Any]]:
        return Ledger(self.db).payments(order_id)


def _request(rng: np.random.Generator, n: int, prefix: str = "") -> tuple[str, ChargeRequest]:
    return f"k-{prefix}{n}", ChargeRequest(f"order-{prefix}{n}", int(rng.integers(500, 9000)))


def _check_lost_response(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    key, req = _request(rng, n)
    t.faults(lose_next=1)
    first = _post(t.client, t.url, req, key, timeout=LOST_RESPONSE_TIMEOUT)
    retries = [_post(t.client, t.url, req, key) for _ in range(2)]
    errors = _handler_errors(retries)
    charges = t.charges(req.order_id)
    replayed = len(charges) == 1 and all(_charge_id(r) == charges[0]["charge_id"] for r in retries) \
        and len({_describe(r) for r in retries}) == 1
    return ex.Check("lost response, then 2 retries", replayed,
                    "exactly 1 charge; each retry replays the original response (same charge_id)",
                    f"{len(charges)} charge(s) for key {key}; first attempt: {_describe(first)}; "
                    f"retries got: {', '.join(map(_describe, retries))}" + _errors_note(errors),
                    hint=_hint(errors, "Store the first response under the key and return it "
                                       "on a retry instead of charging again."))


def _check_concurrent(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    key, req = _request(rng, n)
    barrier = threading.Barrier(PARALLEL)

    def one(_: int) -> Response:
        with httpx.Client() as c:
            barrier.wait(timeout=NORMAL_TIMEOUT)  # release all requests at once
            return _post(c, t.url, req, key)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        results = list(pool.map(one, range(PARALLEL)))
    errors = _handler_errors(results)
    charges = t.charges(req.order_id)
    codes: dict[str, int] = {}
    for r in results:
        label = r if isinstance(r, str) else str(r.status_code)
        codes[label] = codes.get(label, 0) + 1
    ok = len(charges) == 1 and all(
        not isinstance(r, str) and (r.status_code == 409 or _charge_id(r) == charges[0]["charge_id"])
        for r in results) and any(_charge_id(r) for r in results)
    return ex.Check(f"{PARALLEL} concurrent requests, one key", ok,
                    "exactly 1 charge; every response is the original or 409 Conflict",
                    f"{len(charges)} charge(s) for key {key}; responses: "
                    + ", ".join(f"{v}x {k}" for k, v in sorted(codes.items())) + _errors_note(errors),
                    hint=_hint(errors, "Checking for the key and then inserting it is a race: "
                                       "claim it with ledger.claim (one transaction) and act on "
                                       "its outcome."))


def _check_mismatch(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    key, first = _request(rng, n)
    other = ChargeRequest(first.order_id, first.amount_cents + 1000)  # same key, another amount
    r1, r2 = _post(t.client, t.url, first, key), _post(t.client, t.url, other, key)
    errors = _handler_errors([r1, r2])
    charges = t.charges(first.order_id)
    ok = not isinstance(r2, str) and r2.status_code == 422 and len(charges) == 1 \
        and _charge_id(r1) == charges[0]["charge_id"]
    return ex.Check("same key, different amount", ok,
                    "first 201 with a charge; second 422 and no new charge",
                    f"first: {_describe(r1)}; second: {_describe(r2)}; {len(charges)} charge(s) "
                    f"for key {key}" + _errors_note(errors),
                    hint=_hint(errors, "Fingerprint the body (api.fingerprint(request.as_dict())): "
                                       "the claim says 'mismatch' for another payload: 422."))


def _check_missing_key(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    _, req = _request(rng, n)
    r = _post(t.client, t.url, req, None)
    charges = len(t.charges(req.order_id))
    errors = _handler_errors([r])
    ok = not isinstance(r, str) and r.status_code == 400 and charges == 0
    return ex.Check("no Idempotency-Key header", ok, "400 Bad Request and no charge",
                    f"{_describe(r)}; {charges} charge(s)" + _errors_note(errors),
                    hint=_hint(errors, "key is None when the header is missing: answer 400 "
                                       "before touching the ledger."))


def _check_distinct_keys(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    _, req = _request(rng, n)
    rs = [_post(t.client, t.url, req, f"k-{n}-{i}") for i in range(2)]
    charges, payments = t.charges(req.order_id), t.payments(req.order_id)
    errors = _handler_errors(rs)
    ok = len(charges) == 2 and sorted(_charge_id(r) or "" for r in rs) == sorted(
        c["charge_id"] for c in charges) and len(payments) == 2
    return ex.Check("two different keys", ok,
                    "2 charges, each answered 201 with its charge and recorded in payments",
                    f"{', '.join(map(_describe, rs))}; {len(charges)} charge(s) taken, "
                    f"{len(payments)} recorded in payments" + _errors_note(errors),
                    hint=_hint(errors, "A new key is a new payment: charge it with ledger.charge, "
                                       "record it with ledger.finish, answer 201 with the charge."))


def _check_card_network_down(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    key, req = _request(rng, n)
    t.faults(fail_charges=1)
    first = _post(t.client, t.url, req, key)
    retry = _post(t.client, t.url, req, key)
    charges = t.charges(req.order_id)
    errors = _handler_errors([retry])
    failed_first = not isinstance(first, str) and first.status_code >= 500
    ok = failed_first and len(charges) == 1 and _charge_id(retry) == charges[0]["charge_id"]
    return ex.Check("card network down for the first attempt", ok,
                    "first attempt 5xx (nothing charged); the retry 201 with the one charge",
                    f"first: {_describe(first)}; retry: {_describe(retry)}; {len(charges)} "
                    f"charge(s)" + _errors_note(errors),
                    hint=_hint(errors, "Save the response only once the charge exists. If "
                                       "ledger.charge raises, nothing was taken: ledger.release"
                                       "(key) and re-raise, so the retry can charge."))


def _check_crash(t: Target, rng: np.random.Generator, n: int) -> ex.Check:
    key, req = _request(rng, n, prefix="crash-")
    t.faults(crash_after="charge")
    first = _post(t.client, t.url, req, key)
    try:
        died = t.crashing.wait(timeout=5) is not None  # seconds; it died with the connection
    except subprocess.TimeoutExpired:
        died = False
    # first, another amount under the key: only a durable fingerprint can refuse it here
    other = _post(t.client, t.restarted_url, ChargeRequest(req.order_id, req.amount_cents + 1), key)
    answers, deadline = [], time.monotonic() + RECOVERY_WAIT
    while True:  # the client retries with the same key, as a real client would
        retry = _post(t.client, t.restarted_url, req, key)
        answers.append(_describe(retry))
        if isinstance(retry, str) or retry.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    again = _post(t.client, t.restarted_url, req, key)
    charges, payments = t.charges(req.order_id), t.payments(req.order_id)
    errors = _handler_errors([retry, again, other])
    ids = {_charge_id(retry), _charge_id(again)}
    refused = not isinstance(other, str) and other.status_code == 422
    ok = died and len(charges) == 1 and ids == {charges[0]["charge_id"]} and len(payments) == 1 \
        and refused
    conflicts = answers.count("409")
    return ex.Check("SIGKILL after the charge, then retries on a new process", ok,
                    f"exactly 1 charge; after the lease ({CHECK_LEASE:g} s) a retry gets 201 "
                    "with it, and so does the next; the payment recorded once; the key with "
                    "another amount, sent first, 422",
                    f"first: {_describe(first)}" + ("" if died else " (the service did not "
                    "crash: your handler never charged)") + f"; retries: {conflicts}x 409, then "
                    f"{answers[-1]}; again: {_describe(again)}; another amount (sent first): "
                    f"{_describe(other)}; "
                    f"{len(charges)} charge(s), "
                    f"{len(payments)} payment(s)" + _errors_note(errors),
                    hint=_hint(errors, "Only the ledger survives a crash: keep keys and "
                                       "responses there, not in Python memory. A takeover must "
                                       "not charge twice: pass processor_key=key to ledger.charge, "
                                       "so the card network returns the charge it already made."))


# The rows, in the order they run; each is also the ``row`` argument of :func:`run_row`.
ROWS: tuple[tuple[str, str, Callable[..., ex.Check]], ...] = (
    ("lost response, then 2 retries", "the first response lost", _check_lost_response),
    (f"{PARALLEL} concurrent requests, one key", f"{PARALLEL} requests released at once",
     _check_concurrent),
    ("same key, different amount", "the same key with 1000 cents more", _check_mismatch),
    ("no Idempotency-Key header", "no header", _check_missing_key),
    ("two different keys", "one order, keys k-N-0 and k-N-1", _check_distinct_keys),
    ("card network down for the first attempt", "the first charge refused",
     _check_card_network_down),
    ("SIGKILL after the charge, then retries on a new process",
     "the service killed right after the card network charged", _check_crash),
)


def judge(payload_path: Path, seed: int, only: str | None = None) -> list[dict[str, Any]]:
    """Run the rows (up to ``only``, if given) against the handler in ``payload_path``;
    runs in the judge process. Returns each row as a dict, with the input it ran on."""
    rng = np.random.default_rng(seed)
    workdir = payload_path.parent
    db, log = workdir / "ledger.sqlite", workdir / "services.log"
    Ledger(db)  # create the tables before two processes open the file
    options = {"handler_payload": payload_path, "lease": CHECK_LEASE,
               "processor_delay": CHECK_PROCESSOR_DELAY, "log": log}
    with ThreadPoolExecutor(max_workers=2) as pool:  # start both processes at once
        first, second = pool.map(lambda _: start_payment_process(db, **options), range(2))
    (crashing, url), (restarted, restarted_url) = first, second
    rows = []
    try:
        with httpx.Client() as client:
            target = Target(url, restarted_url, db, client, crashing)
            for i, (name, case, row) in enumerate(ROWS):
                n = int(rng.integers(10 ** (i + 1), 10 ** (i + 2)))
                seed_arg = "" if seed == 1 else f", seed={seed}"
                check = ex.judge(name, lambda row=row, n=n: row(target, rng, n),
                                 case=f"{case}, n={n} (seed {seed})",
                                 reproduce=f'checks.run_row(my_answer, "{name}"{seed_arg})')
                rows.append(asdict(check))
                if only and only == name:
                    break
    finally:
        for process in (crashing, restarted):
            process.kill()
            process.wait(timeout=NORMAL_TIMEOUT)
    return rows


def _judge_in_new_process(answer: Any, seed: int, only: str | None = None
                          ) -> tuple[list[ex.Check], str]:
    """The rows as the judge process found them, and what the service processes printed."""
    try:
        payload = fresh_process.program(answer)
    except fresh_process.CannotSend as exc:
        return [ex.Check("your handler runs in a service process", False,
                         "a handler the service processes can rebuild", str(exc))], ""
    with tempfile.TemporaryDirectory(prefix="api-check-") as tmp:
        payload_path, result_path = Path(tmp, "handler.pkl"), Path(tmp, "rows.json")
        payload_path.write_bytes(pickle.dumps(payload))
        command = [sys.executable, "-m", __name__, str(payload_path), str(result_path), str(seed)]
        try:
            done = subprocess.run(command + ([only] if only else []), capture_output=True,
                                  text=True, timeout=JUDGE_TIMEOUT)
            error = "" if result_path.exists() else done.stderr.strip()[-400:]
        except subprocess.TimeoutExpired:
            error = f"the check did not finish within {JUDGE_TIMEOUT:g} s"
        log_path = Path(tmp, "services.log")
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if error:
            return [ex.Check("the check ran", False, "a verdict", error)], log
        rows = json.loads(result_path.read_text())
    return [ex.Check(r["name"], r["passed"], r["expected"], r["found"], r["hint"])
            for r in rows], log


def _checks(answer: Any, seed: int = 1) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(answer, "your charge handler"):
        yield bad
        return
    yield from _judge_in_new_process(answer, seed)[0]


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's charge handler: serve it in processes of its own and replay the
    double charge against it."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


def run_row(answer: Any, row: str, seed: int = 1) -> ex.Check:
    """Run the check up to ``row`` (a part of its name, see :data:`ROWS`), print what the
    service processes printed (your handler's prints and tracebacks), return the row."""
    matches = [name for name, _, _ in ROWS if row in name]
    if len(matches) != 1:
        raise ValueError(f"row {row!r} names {len(matches)} rows; use a part of one of "
                         f"{[name for name, _, _ in ROWS]}")
    rows, log = _judge_in_new_process(answer, seed, only=matches[0])
    print(log.strip() or "(the service processes printed nothing)")
    return rows[-1]


# --- The review quiz ---------------------------------------------------------------------

QUIZ = qz.Quiz(EXERCISE_ID, {
    "reused-key": qz.Choice(
        "A client sends POST /charges with Idempotency-Key k1 and amount 1000, then the same "
        "key with amount 2000. Following the IETF Idempotency-Key draft, what does the server "
        "answer to the second request?",
        ("200 with the stored response of the first request", "409 Conflict",
         "422 Unprocessable Content", "201 Created: the body differs, so it is a new charge"),
        2, "The draft: a key must not be reused with a different payload, and the server "
           "SHOULD answer 422. Replaying (200) would tell the client 2000 was charged when 1000 "
           "was; a new charge makes the key useless. Stripe also errors when the parameters "
           "differ. 409 is for the next question's case."),
    "in-flight": qz.Choice(
        "The first request with key k2 is still charging. The client times out and retries "
        "with the same key and body. What does the retry get, and what should the client do?",
        ("409 Conflict; retry later, with backoff, with the same key and body",
         "409 Conflict; make a new key and retry at once",
         "422 Unprocessable Content; fix the body first",
         "The server waits for the first request, then runs the retry again"),
        0, "The draft: a request that arrives while the original is still being processed "
           "gets a conflict (409), and 409 is the one error that needs no correction before a "
           "retry. A new key is exactly the double charge: the server can no longer connect "
           "the two attempts."),
    "decorrelated-mean": qz.Numeric(
        "Decorrelated jitter: sleep = min(cap, uniform(base, 3 * previous)). With base 100 ms, "
        "cap 1000 ms and a previous sleep of 400 ms, what is the expected next sleep, in ms?",
        631.8, 5.0, "ms",
        "The draw is uniform on [100, 1200] ms; above 1000 it is clipped to the cap (probability "
        "200/1100). E = (∫ u du from 100 to 1000 + 1000 · 200) / 1100 = (495,000 + 200,000) / "
        "1100 ≈ 631.8 ms."),
    "claim-race": qz.Choice(
        "A handler runs SELECT on the keys table and, if no row comes back, INSERTs the key and "
        "charges. Two identical requests arrive 1 ms apart. What is wrong?",
        ("Nothing: the SELECT takes microseconds, a race cannot happen",
         "Both SELECTs can see no row before either INSERT commits, so both charge; claim with "
         "one atomic statement (INSERT … ON CONFLICT DO NOTHING) or under the write lock",
         "The SELECT must run after the INSERT",
         "Add retries with exponential backoff around the SELECT"),
        1, "Check-then-act: nothing stops two requests from both passing the check. With one "
           "INSERT on a unique key (or BEGIN IMMEDIATE before the read), the database decides "
           "which request wins; the losers replay, answer 409 or 422. Step 3's twenty threads "
           "showed it."),
    "takeover": qz.Choice(
        "A service claimed key k5, called the card network, and crashed before storing the "
        "response. After the lease (Brandur Leach's example uses 90 s) a retry takes the key "
        "over. What must it do before charging?",
        ("Charge: no response is stored, so the first charge cannot have happened",
         "Answer 409 for ever: the key is locked",
         "Ask the card network whether a charge exists for this key: charge with the "
         "processor's own idempotency key, so it returns the first charge instead of a second",
         "Delete the key and answer 500, so the client retries with a new key"),
        2, "The crash may have come after the card network charged and before the local "
           "commit: only the card network knows. Passing it an idempotency key derived from "
           "ours (Stripe's API accepts one) makes the repeated call return the original charge. "
           "Charging again is the double charge; 409 for ever or a new key strands the client."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)


if __name__ == "__main__":  # the judge process: payload, result file, seed[, only row]
    _payload, _result, _seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    _rows = judge(_payload, _seed, sys.argv[4] if len(sys.argv) > 4 else None)
    _result.write_text(json.dumps(_rows))
