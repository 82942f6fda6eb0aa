"""The four "Your turn" step checks of ``01_api_communication.ipynb``.

Each judges one small piece of the mechanism on inputs the notebook never showed:

1. backoff with full jitter and with decorrelated jitter: bounds, and the spread of 2,000
   draws against the uniform distribution the AWS blog names (a Kolmogorov-Smirnov
   distance, on fixed seeds: the verdict never depends on chance or on the machine);
2. the request fingerprint: key order does not matter, every change of value does, and
   a new process computes the same fingerprint (Python's ``hash()`` of a str does not);
3. the atomic claim in SQLite, with 20 threads released together on one key;
4. the payment and its stored response in one transaction, with a failure injected
   before each of its statements in turn.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import api_communication as api
from labsupport import exercises as ex
from labsupport import fresh_process
from labsupport.checks.sqlite_faults import FailingAt, InjectedFailure, connect, race

NOTEBOOK_ID = "01_api_communication"
SAMPLES = 2_000  # draws per distribution check
MAX_KS = 0.06  # Kolmogorov-Smirnov distance allowed; 1.63/sqrt(2000) = 0.036 is the 1% level
THREADS = 20  # requests released together on one key


# --- Step 1: backoff -----------------------------------------------------------------

def _delays(fn: Callable[..., Any], args: tuple, seed: int, n: int = SAMPLES) -> np.ndarray:
    """``n`` draws of ``fn(*args, rng)``, one rng for all; ValueError on a non-number."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        values.append(ex.as_number(fn(*args, rng), "a finite number of seconds"))
    return np.array(values)


def _ks_uniform(values: np.ndarray, low: float, high: float) -> float:
    """Kolmogorov-Smirnov distance between the draws and U(low, high)."""
    if high <= low:
        return 0.0 if np.allclose(values, low) else 1.0
    x = np.sort(values)
    cdf = np.clip((x - low) / (high - low), 0.0, 1.0)
    i = np.arange(1, len(x) + 1) / len(x)
    return float(max(np.max(i - cdf), np.max(cdf - (i - 1 / len(x)))))


def _full_rows(full: Callable[..., Any], base: float, cap: float, seed: int) -> Iterator[ex.Check]:
    bounds_ok, worst = True, ""
    for attempt in range(12):
        top = min(cap, base * 2.0 ** attempt)
        d = _delays(full, (attempt, base, cap), seed + attempt, 200)
        if d.min() < 0 or d.max() > top + 1e-12:
            bounds_ok, worst = False, (f"attempt {attempt}: draws from {d.min():.4f} to "
                                       f"{d.max():.4f} s, allowed [0, {top:.4f}]")
            break
    yield ex.Check("full jitter: within [0, min(cap, base·2^attempt)]", bounds_ok,
                   "every draw in range, attempts 0 to 11", worst or "all in range",
                   hint="Full jitter is rng.uniform(0, min(cap, base * 2**attempt)).")
    for attempt in (2, 9):  # one below the cap, one capped
        top = min(cap, base * 2.0 ** attempt)
        d = _delays(full, (attempt, base, cap), seed + 100 + attempt)
        ks = _ks_uniform(d, 0.0, top)
        yield ex.Check(f"full jitter: spread like U(0, {top:.3g}) at attempt {attempt}",
                       ks <= MAX_KS, f"KS distance ≤ {MAX_KS} over {SAMPLES} draws",
                       f"KS distance {ks:.3f}; mean {d.mean():.4f} s (U(0, {top:.3g}) has "
                       f"{top / 2:.4f})",
                       hint="Every value between 0 and the exponential delay must be equally "
                            "likely: no jitter, or only half of it (equal jitter), spreads less.")


def _decorrelated_rows(deco: Callable[..., Any], base: float, cap: float,
                       seed: int) -> Iterator[ex.Check]:
    bad = ""
    for previous in (None, base, 2.7 * base, 40 * base, cap):
        last = base if previous is None else previous
        high = min(cap, 3 * last)
        d = _delays(deco, (previous, base, cap), seed + 7, 200)
        if d.min() < min(base, high) - 1e-12 or d.max() > high + 1e-12:
            bad = (f"previous={previous}: draws from {d.min():.4f} to {d.max():.4f} s, allowed "
                   f"[{min(base, high):.4f}, {high:.4f}]")
            break
    yield ex.Check("decorrelated: within [base, min(cap, 3·previous)]", not bad,
                   "every draw in range (previous None means base)", bad or "all in range",
                   hint="Decorrelated jitter is min(cap, rng.uniform(base, 3 * previous)), with "
                        "previous = base before the first retry.")
    previous = 5.5 * base
    d = _delays(deco, (previous, base, cap), seed + 11)
    ks = _ks_uniform(d, base, 3 * previous)
    yield ex.Check("decorrelated: spread like U(base, 3·previous)", ks <= MAX_KS,
                   f"KS distance ≤ {MAX_KS} over {SAMPLES} draws (previous {previous:.3g} s)",
                   f"KS distance {ks:.3f}; mean {d.mean():.4f} s (U({base:.3g}, "
                   f"{3 * previous:.3g}) has {(base + 3 * previous) / 2:.4f})",
                   hint="Every value between base and 3 * previous must be equally likely "
                        "(rng.uniform(base, 3 * previous), then capped): it grows from the "
                        "client's own last sleep, not from the attempt number.")


def _same_from_rng(fn: Callable[..., Any], args: tuple, name: str) -> ex.Check:
    a = _delays(fn, args, 99, 5)
    b = _delays(fn, args, 99, 5)
    return ex.Check(f"{name}: draws from the rng given", bool(np.array_equal(a, b)),
                    "two rngs with one seed give the same delays",
                    f"{np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}",
                    hint="Use the rng argument (rng.uniform), not random or np.random: a "
                         "simulation must be reproducible from its seed.")


def step_1_checks(answer: Any, seed: int = 3) -> Iterator[ex.Check]:
    if not (isinstance(answer, tuple) and len(answer) == 2):
        yield ex.Check("answer", False, "(full_jitter, decorrelated_jitter)", f"{answer!r:.60}")
        return
    full, deco = answer
    for fn, what in ((full, "full_jitter"), (deco, "decorrelated_jitter")):
        if bad := ex.expect_callable(fn, what):
            yield bad
            return
    base, cap = 0.037, 2.5  # seconds; not the notebook's values
    yield ex.judge("full jitter: draws from the rng given", lambda: _same_from_rng(
        full, (3, base, cap), "full jitter"), case="full_jitter(3, 0.037, 2.5, rng)")
    yield from ex.rows_or_raised(lambda: _full_rows(full, base, cap, seed), "full jitter rows",
                                 "full_jitter(attempt, 0.037, 2.5, rng), attempts 0 to 11")
    yield ex.judge("decorrelated: draws from the rng given", lambda: _same_from_rng(
        deco, (0.2, base, cap), "decorrelated"), case="decorrelated_jitter(0.2, 0.037, 2.5, rng)")
    yield from ex.rows_or_raised(lambda: _decorrelated_rows(deco, base, cap, seed),
                                 "decorrelated rows", "decorrelated_jitter(previous, 0.037, 2.5, rng)")


# --- Step 2: the fingerprint -----------------------------------------------------------

BODY = {"order_id": "o-4711", "amount_cents": 2599, "currency": "eur",
        "metadata": {"cart": "c-93", "coupon": None, "items": [{"sku": "a-1", "qty": 2}]}}


def _reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def _changed() -> list[tuple[str, dict[str, Any]]]:
    """Bodies that differ from BODY in one value each: another payment."""
    def edit(path: tuple, value: Any) -> dict[str, Any]:
        body = json.loads(json.dumps(BODY))
        target = body
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return body
    return [("amount 2599 -> 2600", edit(("amount_cents",), 2600)),
            ("amount as the string \"2599\"", edit(("amount_cents",), "2599")),
            ("currency eur -> EUR", edit(("currency",), "EUR")),
            ("nested qty 2 -> 3", edit(("metadata", "items", 0, "qty"), 3)),
            ("an extra field", {**BODY, "capture": False})]


def _fp(fn: Callable[..., Any], body: dict[str, Any]) -> str:
    value = fn(json.loads(json.dumps(body)))  # a fresh copy: the answer may not keep state in it
    if type(value) is not str:
        raise TypeError(f"returned {type(value).__name__} {value!r:.40}, not a str")
    return value


def step_2_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your fingerprint function"):
        yield bad
        return
    case = f"the body {json.dumps(BODY)}"
    try:
        first = _fp(fn, BODY)
    except Exception as exc:  # noqa: BLE001 - the learner's error is feedback
        yield ex.raised("returns a str", exc, case=case)
        return
    yield ex.judge("the same body twice", lambda: ex.Check(
        "the same body twice", _fp(fn, BODY) == first, "the same fingerprint",
        "same" if _fp(fn, BODY) == first else "two different fingerprints"), case=case)
    shuffled = _reordered(BODY)
    yield ex.judge("keys in another order, at every depth", lambda: ex.Check(
        "keys in another order, at every depth", _fp(fn, shuffled) == first,
        "the same fingerprint", f"{_fp(fn, shuffled)[:20]!r} vs {first[:20]!r}",
        hint="JSON objects have no order: sort the keys at every depth "
             "(json.dumps(body, sort_keys=True) does)."), case=f"{json.dumps(shuffled)}")
    for what, body in _changed():
        yield ex.judge(f"another payment: {what}", lambda body=body, what=what: ex.Check(
            f"another payment: {what}", _fp(fn, body) != first, "a different fingerprint",
            "different" if _fp(fn, body) != first else "the same fingerprint",
            hint="Every field of the body, nested ones and types included, is part of the "
                 "payload: a reused key with any other value must be caught."),
            case=json.dumps(body))
    big = {**BODY, "note": "x" * 2_000}
    yield ex.judge("a digest, not the body", lambda: ex.Check(
        "a digest, not the body", len(_fp(fn, big)) == len(first) <= 128,
        "the same length (≤ 128 characters) for a 2 kB body", f"{len(first)} and "
        f"{len(_fp(fn, big))} characters", hint="Store a hash of the canonical JSON "
        "(hashlib.sha256(...).hexdigest()), not the JSON: keys are compared on every request."),
        case="BODY and BODY with a 2,000-character note")
    fresh = fresh_process.run_fresh(fn, json.loads(json.dumps(BODY)), timeout=60)
    same = fresh.ok and fresh.value == first
    yield ex.Check("the same in a new process", same, "the fingerprint this kernel computed",
                   fresh.error or f"{str(fresh.value)[:20]!r} vs {first[:20]!r}",
                   hint="" if fresh.ok else "Your function must run on its own in a new process.")
    if fresh.ok and not same:
        yield ex.Check("no hash()", False, "a stable hash", "Python's hash() of a str changes "
                       "with every process (PYTHONHASHSEED)", hint="Use hashlib.sha256: the "
                       "service restarts, and other replicas must agree.")


# --- Step 3: the atomic claim ----------------------------------------------------------

def _fresh_db(folder: Path, name: str) -> Path:
    path = folder / f"{name}.sqlite"
    with closing(connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(api.SCHEMA)
    return path


def _key_row(path: Path, key: str) -> dict[str, Any] | None:
    db = connect(path)
    try:
        row = db.execute("SELECT * FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else dict(row)


def _claim_once(fn: Callable[..., Any], path: Path, *args: Any) -> tuple[Any, bool]:
    """The answer's outcome on its own connection, and whether it left a transaction open."""
    db = connect(path)
    try:
        outcome = fn(db, *args)
        return outcome, db.in_transaction
    finally:
        db.close()


OUTCOMES = ("claimed", "in_flight", "replay", "mismatch")


def _outcome_row(name: str, got: Any, want: str, open_tx: bool, hint: str, extra: str = "",
                 ok: bool = True) -> ex.Check:
    good = type(got) is str and got == want and not open_tx and ok
    found = f"{got!r:.40}" + (" and a transaction left open" if open_tx else "") + extra
    return ex.Check(name, good, f"{want!r}", found,
                    hint=("COMMIT (or ROLLBACK) before you return: an open transaction holds "
                          "the write lock and every other request waits." if open_tx else hint))


def _race(fn: Callable[..., Any], path: Path, key: str, fp: str, now: float,
          lease: float) -> list[Any]:
    return race(lambda db: fn(db, key, fp, now, lease), path, THREADS)


def _race_row(name: str, outcomes: list[Any], want_rest: str, hint: str) -> ex.Check:
    counts: dict[str, int] = {}
    for o in outcomes:
        label = o if type(o) is str else repr(o)
        counts[label] = counts.get(label, 0) + 1
    ok = counts.get("claimed") == 1 and counts.get(want_rest) == THREADS - 1
    return ex.Check(name, ok, f"exactly 1 'claimed', {THREADS - 1} {want_rest!r}",
                    ", ".join(f"{v}x {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
                    hint=hint)


def step_3_checks(fn: Any, seed: int = 5) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your claim function"):
        yield bad
        return
    rng = np.random.default_rng(seed)
    now, lease = float(rng.integers(1_000_000, 2_000_000)), float(rng.integers(20, 200))
    fp, other = "f" * 63 + "1", "f" * 63 + "2"
    with tempfile.TemporaryDirectory(prefix="claim-check-") as tmp:
        path = _fresh_db(Path(tmp), "keys")
        case = f"now={now:g}, lease={lease:g}"

        def single(name: str, key: str, want: str, hint: str, at: float = now,
                   f: str = fp, check_row: bool = False) -> ex.Check:
            got, open_tx = _claim_once(fn, path, key, f, at, lease)
            extra, ok = "", True
            if check_row:
                row = _key_row(path, key) or {}
                ok = row.get("status") == "in_flight" and row.get("fingerprint") == f \
                    and row.get("locked_at") == at
                extra = "" if ok else f"; the row is {row or 'missing'}"
            return _outcome_row(name, got, want, open_tx, hint, extra, ok)

        first = ex.judge("a new key is claimed", lambda: single(
            "a new key is claimed", "k-new", "claimed", "Insert the key as 'in_flight' with "
            "locked_at = now; INSERT … ON CONFLICT(key) DO NOTHING tells you if you won.",
            check_row=True), case=f"claim(db, 'k-new', fp, {case})")
        yield first
        yield ex.judge("the same key while in flight", lambda: single(
            "the same key while in flight", "k-new", "in_flight", "The key exists, with this "
            "fingerprint, not done, and its lease has not run out: another request holds it.",
            at=now + lease / 2), case="claim(db, 'k-new', fp, now + lease/2)")
        yield ex.judge("another payload, same key", lambda: single(
            "another payload, same key", "k-new", "mismatch", "Compare the stored "
            "fingerprint first: a reused key with another payload is a client bug (422).",
            f=other), case="claim(db, 'k-new', other_fp, …)")
        with closing(connect(path)) as db:
            api.claim_key(db, "k-done", fp, now - 5, lease)
            api.finish(db, "k-done", {"charge_id": "ch_1", "order_id": "o-1", "amount_cents": 1},
                       api.Reply(201, {"charge_id": "ch_1"}))
        yield ex.judge("a finished key is replayed", lambda: single(
            "a finished key is replayed", "k-done", "replay", "status 'done' means the "
            "response is stored: the handler replays it."), case="a key with status 'done'")
        yield ex.judge("a finished key, long after its lease", lambda: single(
            "a finished key, long after its lease", "k-done", "replay", "A lease only "
            "matters for keys in flight: a done key is replayed, never taken over.",
            at=now + 10 * lease), case="a key with status 'done', now + 10·lease")
        with closing(connect(path)) as db:
            api.claim_key(db, "k-stale", fp, now - lease - 1, lease)
            api.claim_key(db, "k-held", fp, now - lease + 1, lease)
        takeover = ex.judge("a lease that ran out is taken over", lambda: single(
            "a lease that ran out is taken over", "k-stale", "claimed", "locked_at older "
            "than now - lease: the holder crashed or hangs. Set locked_at = now and return "
            "'claimed'.", check_row=True), case=f"locked_at = now - lease - 1, {case}")
        yield takeover
        yield ex.judge("a lease still running is not", lambda: single(
            "a lease still running is not", "k-held", "in_flight", "locked_at within the "
            "lease: the first request may still be charging."),
            case="locked_at = now - lease + 1")
        if not (first.passed and takeover.passed):
            yield ex.Check(f"{THREADS} threads at once", False, "the rows above pass first",
                           "not run", hint="The races need a claim that works on its own.")
            return
        yield ex.judge(f"{THREADS} threads, one new key", lambda: _race_row(
            f"{THREADS} threads, one new key", _race(fn, path, "k-race", fp, now, lease),
            "in_flight", "Reading the key and inserting it in two statements lets every thread "
            "read 'no key' first. Claim in one statement, or BEGIN IMMEDIATE (the write lock) "
            "before you read."), case=f"{THREADS} threads, key 'k-race'")
        with closing(connect(path)) as db:
            api.claim_key(db, "k-race-stale", fp, now - lease - 1, lease)
        yield ex.judge(f"{THREADS} threads, one expired lease", lambda: _race_row(
            f"{THREADS} threads, one expired lease", _race(fn, path, "k-race-stale", fp, now,
                                                           lease),
            "in_flight", "Only one retry may take over: update locked_at in the same "
            "transaction that read it (BEGIN IMMEDIATE), or with a WHERE that re-checks it."),
            case=f"{THREADS} threads, a key whose lease ran out")


# --- Step 4: one transaction -----------------------------------------------------------

def _state(path: Path, key: str, charge_id: str) -> tuple[bool, bool]:
    """(payment recorded?, response stored?) as a new connection sees them."""
    db = connect(path)
    try:
        paid = db.execute("SELECT 1 FROM payments WHERE charge_id = ?", (charge_id,)).fetchone()
        row = db.execute("SELECT status FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return paid is not None, row is not None and row[0] == "done"


def _finish_run(fn: Callable[..., Any], path: Path, key: str, fail_at: int | None,
                charge: dict[str, Any], reply: api.Reply) -> tuple[int, bool, str]:
    """Claim ``key``, run the answer; (statements run, transaction left open, error)."""
    with closing(connect(path)) as db:
        api.claim_key(db, key, "fp", 1000.0, 90.0)
    db = FailingAt(connect(path), fail_at)
    error = ""
    try:
        fn(db, key, dict(charge), reply)
    except InjectedFailure:
        pass  # the crash we injected: what matters is what it left behind
    except Exception as exc:  # noqa: BLE001 - the learner's own error is reported
        error = ex.describe_exception(exc)
    open_tx = db.in_transaction
    db.close()  # uncommitted work is rolled back, as when a process dies
    return db.statements, open_tx, error


def step_4_checks(fn: Any, seed: int = 8) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your finish function"):
        yield bad
        return
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="finish-check-") as tmp:
        path = _fresh_db(Path(tmp), "ledger")

        def charge_for(n: int) -> tuple[dict[str, Any], api.Reply]:
            charge = {"charge_id": f"ch_{n}", "order_id": f"o-{n}",
                      "amount_cents": int(rng.integers(100, 9999)), "currency": "eur"}
            return charge, api.Reply(201, {**charge, "note": "café ✓"})

        charge, reply = charge_for(1)
        statements, open_tx, error = _finish_run(fn, path, "k-1", None, charge, reply)
        paid, stored = _state(path, "k-1", charge["charge_id"])
        ledger = api.Ledger(path)
        try:
            replay = ledger.stored_reply("k-1")
        except (ValueError, TypeError) as exc:  # the body was stored as something not JSON
            replay = f"unreadable ({type(exc).__name__}: {exc})"
        payment = ledger.payments(charge["order_id"])
        ok = (not error and not open_tx and paid and stored and replay == reply
              and [(p["amount_cents"], p["idempotency_key"]) for p in payment]
              == [(charge["amount_cents"], "k-1")])
        found = error or (f"payment recorded: {paid}; key done: {stored}; stored reply "
                          f"{'equals the reply' if replay == reply else replay}"
                          + ("; a transaction was left open" if open_tx else ""))
        yield ex.Check("records the payment and stores the response", ok,
                       "a payments row (amount, key), the key 'done', the reply stored as JSON",
                       found, hint="INSERT INTO payments (charge_id, order_id, amount_cents, "
                       "idempotency_key); UPDATE the key: status 'done', response_code, "
                       "response_body = json.dumps(reply.body); then COMMIT.")
        if not ok:
            return
        broken = []
        for fail_at in range(1, statements + 1):
            charge, reply = charge_for(fail_at + 1)
            key = f"k-crash-{fail_at}"
            _, _, error = _finish_run(fn, path, key, fail_at, charge, reply)
            paid, stored = _state(path, key, charge["charge_id"])
            if error:
                broken.append(f"before statement {fail_at}: {error}")
            elif paid != stored:
                broken.append(f"before statement {fail_at}: payment {'recorded' if paid else 'missing'}"
                              f", response {'stored' if stored else 'missing'}")
        yield ex.Check(f"a crash before each of its {statements} statements", not broken,
                       "both rows or neither, every time", "; ".join(broken) or "both or neither",
                       hint="Each statement outside a transaction commits on its own. Wrap "
                            "both in BEGIN IMMEDIATE … COMMIT, and ROLLBACK if anything raises.")
