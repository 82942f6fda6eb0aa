"""Wrong answers for ``01_api_communication``: charge handlers that still double-charge.

Each builder returns a handler ``(ledger, key, request) -> Reply`` as a learner would
write it in the notebook's starter cell.
"""

from __future__ import annotations

import hashlib
import json
import random

from labsupport import api_communication as api
from labsupport.checks import api_communication as checks
from labsupport.solutions import api_communication as key
from labsupport.solutions.api_communication import idempotent_charge

from . import Exercise, WrongAnswer, step


def starter():
    """The notebook's untouched starter cell."""
    def my_charge_handler(ledger: api.Ledger, key: str | None, request: api.ChargeRequest) -> api.Reply:
        # STARTER: charges on every request, exactly like the service that double-charged above.
        charge = ledger.charge(request, key=key)
        return api.Reply(201, charge)

    my_answer = my_charge_handler
    return my_answer


def check_then_insert():
    """Looks the key up, charges when it is not there, then claims: racing retries all charge."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        fp = api.fingerprint(request.as_dict())
        db = ledger.connect()
        row = db.execute("SELECT status FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        db.close()
        if row is not None and row[0] == "done":
            return ledger.stored_reply(key)
        if row is not None:
            return api.Reply(409, {"error": "in progress"})
        charge = ledger.charge(request, key=key, processor_key=None)
        ledger.claim(key, fp)
        reply = api.Reply(201, charge)
        ledger.finish(key, charge, reply)
        return reply
    return handler


def stores_before_charging():
    """Stores a 201 for the key, then charges: when the charge fails, the 201 is a lie."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        outcome = ledger.claim(key, api.fingerprint(request.as_dict()))
        if outcome == "mismatch":
            return api.Reply(422, {"error": "different payload"})
        if outcome == "in_flight":
            return api.Reply(409, {"error": "in progress"})
        if outcome == "replay":
            return ledger.stored_reply(key)
        planned = {"charge_id": f"ch_{key}", **request.as_dict()}
        ledger.finish(key, planned, api.Reply(201, planned))  # "done" before the money moves
        ledger.charge(request, key=key, processor_key=key)
        return api.Reply(201, planned)
    return handler


_KEYS: dict = {}  # module-level state: what a restart forgets


def in_memory_keys():
    """Keys and replies in a module-level dict: right until the process restarts."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        mine = [api.fingerprint(request.as_dict()), None]
        entry = _KEYS.setdefault(key, mine)  # atomic under the GIL
        if entry is not mine:
            if entry[0] != mine[0]:
                return api.Reply(422, {"error": "different payload"})
            return entry[1] or api.Reply(409, {"error": "in progress"})
        charge = ledger.charge(request, key=key)
        entry[1] = api.Reply(201, charge)
        ledger.finish(key, charge, entry[1])
        return entry[1]
    return handler


def in_memory_keys_processor_key():
    """The same dict, charging with the card network's key: the charge survives, the
    fingerprint does not, so after a restart another amount is not refused."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        mine = [api.fingerprint(request.as_dict()), None]
        entry = _KEYS.setdefault(key, mine)
        if entry is not mine:
            if entry[0] != mine[0]:
                return api.Reply(422, {"error": "different payload"})
            return entry[1] or api.Reply(409, {"error": "in progress"})
        charge = ledger.charge(request, key=key, processor_key=key)
        entry[1] = api.Reply(201, charge)
        ledger.finish(key, charge, entry[1])
        return entry[1]
    return handler


def no_fingerprint():
    """Claims with a constant fingerprint: another amount gets the old charge back."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        outcome = ledger.claim(key, "-")
        if outcome == "in_flight":
            return api.Reply(409, {"error": "in progress"})
        if outcome == "replay":
            return ledger.stored_reply(key)
        charge = ledger.charge(request, key=key, processor_key=key)
        reply = api.Reply(201, charge)
        ledger.finish(key, charge, reply)
        return reply
    return handler


def no_processor_key():
    """The answer key, but charging without the card network's key: a takeover charges twice."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        outcome = ledger.claim(key, api.fingerprint(request.as_dict()))
        if outcome == "mismatch":
            return api.Reply(422, {"error": "different payload"})
        if outcome == "in_flight":
            return api.Reply(409, {"error": "in progress"})
        if outcome == "replay":
            return ledger.stored_reply(key)
        try:
            charge = ledger.charge(request, key=key)
        except Exception:
            ledger.release(key)
            raise
        reply = api.Reply(201, charge)
        ledger.finish(key, charge, reply)
        return reply
    return handler


def never_releases():
    """The answer key without release: a charge that failed leaves the key in flight."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        outcome = ledger.claim(key, api.fingerprint(request.as_dict()))
        if outcome == "mismatch":
            return api.Reply(422, {"error": "different payload"})
        if outcome == "in_flight":
            return api.Reply(409, {"error": "in progress"})
        if outcome == "replay":
            return ledger.stored_reply(key)
        charge = ledger.charge(request, key=key, processor_key=key)
        reply = api.Reply(201, charge)
        ledger.finish(key, charge, reply)
        return reply
    return handler


def charges_without_key():
    """The answer key, except that a request with no key is charged instead of refused."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(201, ledger.charge(request))
        return idempotent_charge(ledger, key, request)
    return handler


def in_flight_returns_nothing():
    """Forgets the in-flight case: returns None while the first request runs, a 500."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        outcome = ledger.claim(key, api.fingerprint(request.as_dict()))
        if outcome == "mismatch":
            return api.Reply(422, {"error": "different payload"})
        if outcome == "replay":
            return ledger.stored_reply(key)
        if outcome == "claimed":
            charge = ledger.charge(request, key=key, processor_key=key)
            reply = api.Reply(201, charge)
            ledger.finish(key, charge, reply)
            return reply
    return handler


def patches_the_checker():
    """Charges on every request, and from inside the handler rewrites the checker's rows to
    pass: it runs in a service process, so the judge process never sees the patch."""
    def handler(ledger, key, request):
        import labsupport.checks.api_communication as c
        from labsupport import exercises

        def passed(*args, **kwargs):
            return exercises.Check("patched", True, "", "")
        c.ROWS = tuple((name, case, passed) for name, case, _ in c.ROWS)
        exercises.judge = lambda name, run, **kw: exercises.Check(name, True, "", "")
        return api.Reply(201, ledger.charge(request, key=key))
    return handler


def hard_coded():
    """Answers 201 with a made-up charge and never charges: no double charge, no payment."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        return api.Reply(201, {"charge_id": "ch_0000000000000000", **request.as_dict()})
    return handler


# --- Step 1: backoff ------------------------------------------------------------------

def no_jitter():
    """Exponential backoff with no jitter at all: every client of a herd sleeps alike."""
    def full_jitter(attempt, base, cap, rng):
        return min(cap, base * 2 ** attempt)

    def decorrelated_jitter(previous, base, cap, rng):
        return min(cap, 3 * (base if previous is None else previous))
    return full_jitter, decorrelated_jitter


def uncapped_and_from_attempt():
    """Full jitter without the cap; "decorrelated" grown from a counter, not the last sleep."""
    def full_jitter(attempt, base, cap, rng):
        return float(rng.uniform(0, base * 2 ** attempt))

    def decorrelated_jitter(previous, base, cap, rng):
        return min(cap, float(rng.uniform(0, 3 * base)))
    return full_jitter, decorrelated_jitter


def equal_jitter_and_global_random():
    """Equal jitter where full was asked; decorrelated from the random module, not the rng."""

    def full_jitter(attempt, base, cap, rng):
        e = min(cap, base * 2 ** attempt)
        return e / 2 + float(rng.uniform(0, e / 2))

    def decorrelated_jitter(previous, base, cap, rng):
        return min(cap, random.uniform(base, 3 * (base if previous is None else previous)))
    return full_jitter, decorrelated_jitter


# --- Step 2: the fingerprint ------------------------------------------------------------

def dumps_unsorted():
    """json.dumps without sort_keys: the same payload in another key order looks new."""
    import json

    def fp(body):
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()
    return fp


def builtin_hash():
    """Python's hash(): stable in one process, different after a restart."""

    def fp(body):
        return str(hash(json.dumps(body, sort_keys=True)))
    return fp


def top_level_sort_only():
    """Sorts the top-level items only: nested objects keep their order."""

    def fp(body):
        return hashlib.sha256(str(sorted(body.items())).encode()).hexdigest()
    return fp


def amount_only():
    """Fingerprints the amount alone: another currency or order passes as the same."""

    def fp(body):
        return hashlib.sha256(str(body.get("amount_cents")).encode()).hexdigest()
    return fp


def canonical_json_itself():
    """Stores the whole canonical JSON: right answers, but the key table grows with bodies."""

    def fp(body):
        return json.dumps(body, sort_keys=True, separators=(",", ":"))
    return fp


# --- Step 3: the claim ---------------------------------------------------------------------

def claim_check_then_insert():
    """Reads, then inserts in a second statement: every racing request reads "no key"."""
    def claim(db, key, fingerprint, now, lease):
        row = db.execute("SELECT fingerprint, status, locked_at FROM idempotency_keys "
                         "WHERE key = ?", (key,)).fetchone()
        if row is None:
            db.execute("INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, status, "
                       "created_at, expires_at, locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?)",
                       (key, fingerprint, now, now + 86400, now))
            return "claimed"
        if row[0] != fingerprint:
            return "mismatch"
        if row[1] == "done":
            return "replay"
        if row[2] <= now - lease:
            db.execute("UPDATE idempotency_keys SET locked_at = ? WHERE key = ?", (now, key))
            return "claimed"
        return "in_flight"
    return claim


def claim_no_lease():
    """Atomic insert, but a key in flight stays in flight: a crash blocks it for a day."""
    def claim(db, key, fingerprint, now, lease):
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + 86400, now)).rowcount == 1
        if inserted:
            return "claimed"
        stored, status = db.execute("SELECT fingerprint, status FROM idempotency_keys "
                                    "WHERE key = ?", (key,)).fetchone()
        if stored != fingerprint:
            return "mismatch"
        return "replay" if status == "done" else "in_flight"
    return claim


def claim_takeover_race():
    """Atomic insert; the takeover reads the lease, then updates unconditionally."""
    def claim(db, key, fingerprint, now, lease):
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + 86400, now)).rowcount == 1
        if inserted:
            return "claimed"
        stored, status, locked_at = db.execute(
            "SELECT fingerprint, status, locked_at FROM idempotency_keys WHERE key = ?",
            (key,)).fetchone()
        if stored != fingerprint:
            return "mismatch"
        if status == "done":
            return "replay"
        if locked_at <= now - lease:
            db.execute("UPDATE idempotency_keys SET locked_at = ? WHERE key = ?", (now, key))
            return "claimed"
        return "in_flight"
    return claim


def claim_forgets_commit():
    """BEGIN IMMEDIATE and no COMMIT: the claim is never saved and the write lock is held."""
    def claim(db, key, fingerprint, now, lease):
        db.execute("BEGIN IMMEDIATE")
        inserted = db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + 86400, now)).rowcount == 1
        return "claimed" if inserted else "in_flight"
    return claim


def claim_returns_bool():
    """Returns True/False as the old API did: the handler cannot tell 409 from 422."""
    def claim(db, key, fingerprint, now, lease):
        return db.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, status, created_at, expires_at, "
            "locked_at) VALUES (?, ?, 'in_flight', ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, fingerprint, now, now + 86400, now)).rowcount == 1
    return claim


# --- Step 4: one transaction ---------------------------------------------------------------

def finish_autocommit():
    """Two statements, each committing on its own: a crash between them splits them."""

    def finish(db, key, charge, reply):
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?)",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ? WHERE key = ?", (reply.status, json.dumps(reply.body), key))
    return finish


def finish_response_first():
    """Stores the response, then records the payment, without a transaction."""

    def finish(db, key, charge, reply):
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ? WHERE key = ?", (reply.status, json.dumps(reply.body), key))
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?)",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
    return finish


def finish_never_commits():
    """BEGIN and both statements, but no COMMIT: nothing is ever saved."""

    def finish(db, key, charge, reply):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?)",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ? WHERE key = ?", (reply.status, json.dumps(reply.body), key))
    return finish


def finish_str_body():
    """Stores str(reply.body), not JSON: the replay cannot be read back."""
    def finish(db, key, charge, reply):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO payments VALUES (?, ?, ?, ?)",
                   (charge["charge_id"], charge["order_id"], charge["amount_cents"], key))
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ? WHERE key = ?", (reply.status, str(reply.body), key))
        db.execute("COMMIT")
    return finish


def finish_no_payment():
    """Stores the response in a transaction but never records the payment."""

    def finish(db, key, charge, reply):
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = ?, "
                   "response_body = ? WHERE key = ?", (reply.status, json.dumps(reply.body), key))
        db.execute("COMMIT")
    return finish


STEPS = [
    step(checks, 1, lambda: (key.full_jitter, key.decorrelated_jitter), [
        WrongAnswer("no jitter", "a herd that failed together retries together, forever",
                    no_jitter, "spread like U(0"),
        WrongAnswer("uncapped; decorrelated from base only", "sleeps grow without bound, and "
                    "decorrelated jitter never grows", uncapped_and_from_attempt, "within"),
        WrongAnswer("equal jitter; global random", "equal jitter is not full jitter; a "
                    "delay not drawn from the rng cannot be reproduced",
                    equal_jitter_and_global_random, "spread like U(0"),
        WrongAnswer("decorrelated from the random module", "not reproducible from the seed",
                    equal_jitter_and_global_random, "decorrelated: draws from the rng"),
    ]),
    step(checks, 2, lambda: key.request_fingerprint, [
        WrongAnswer("json.dumps unsorted", "a client library that orders keys differently "
                    "gets 422 for its own retry", dumps_unsorted, "another order"),
        WrongAnswer("builtin hash()", "after a restart every stored fingerprint mismatches",
                    builtin_hash, "new process"),
        WrongAnswer("top-level sort only", "nested objects keep their order",
                    top_level_sort_only, "another order"),
        WrongAnswer("amount only", "a reused key for another order passes as a retry",
                    amount_only, "another payment"),
        WrongAnswer("the JSON itself", "the key table stores whole bodies",
                    canonical_json_itself, "a digest"),
    ]),
    step(checks, 3, lambda: key.claim, [
        WrongAnswer("check then insert", "two racing retries both read 'no key' and both "
                    "charge", claim_check_then_insert, "threads, one new key"),
        WrongAnswer("no lease", "a crash after the claim blocks the key for 24 hours",
                    claim_no_lease, "lease that ran out"),
        WrongAnswer("takeover without re-checking", "twenty retries after a crash all take "
                    "over and all charge", claim_takeover_race, "one expired lease"),
        WrongAnswer("forgets COMMIT", "the claim is lost and every other request waits for "
                    "the lock", claim_forgets_commit, "a new key is claimed"),
        WrongAnswer("returns a bool", "the handler cannot tell a retry (409) from another "
                    "payload (422)", claim_returns_bool, "a new key is claimed"),
    ]),
    step(checks, 4, lambda: key.finish, [
        WrongAnswer("two autocommit statements", "a crash between them leaves a payment "
                    "without its response", finish_autocommit, "a crash before each"),
        WrongAnswer("response first, no transaction", "a crash leaves a stored 201 for a "
                    "payment that was never recorded", finish_response_first, "a crash before each"),
        WrongAnswer("never commits", "nothing is saved: every retry charges again",
                    finish_never_commits, "records the payment"),
        WrongAnswer("str() of the body", "the stored reply cannot be replayed",
                    finish_str_body, "records the payment"),
        WrongAnswer("no payment recorded", "the books never learn the order is paid",
                    finish_no_payment, "records the payment"),
    ]),
]


EXERCISES = [
    *STEPS,
    Exercise(
        id="01_api_communication",
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: idempotent_charge,
        gallery=[
            WrongAnswer("starter", "charges on every request: the lost response plus a retry "
                        "is the double charge of the scenario", starter, "lost response"),
            WrongAnswer("check-then-insert", "two retries arriving together both find no key "
                        "and both charge", check_then_insert, "concurrent requests"),
            WrongAnswer("key stored before the charge", "when the card network fails, the key "
                        "replays a 201 for money never taken", stores_before_charging,
                        "card network down"),
            WrongAnswer("keys in a module-level dict", "a restart forgets every key: the retry "
                        "charges again", in_memory_keys, "SIGKILL"),
            WrongAnswer("module-level dict, processor key", "after a restart another amount "
                        "under the same key is not refused", in_memory_keys_processor_key,
                        "SIGKILL"),
            WrongAnswer("no payload fingerprint", "a reused key with another amount silently "
                        "returns the first charge instead of 422", no_fingerprint,
                        "different amount"),
            WrongAnswer("no processor key", "the retry that takes over after a crash charges "
                        "a second time", no_processor_key, "SIGKILL"),
            WrongAnswer("never releases a failed claim", "the card network was down once and "
                        "the customer gets 409 until the lease runs out", never_releases,
                        "card network down"),
            WrongAnswer("charges without a key", "a client that forgot the header can still "
                        "double-charge; the draft says 400", charges_without_key,
                        "no Idempotency-Key"),
            WrongAnswer("in flight returns None", "the service answers 500 while the first "
                        "request runs", in_flight_returns_nothing, "concurrent requests"),
            WrongAnswer("never charges", "answers 201 without charging: two keys are two "
                        "payments and neither is taken", hard_coded, "two different keys"),
            WrongAnswer("patches the checker", "a handler that rewrites the checker's rows "
                        "while it runs: it runs in a service process, the judge is another",
                        patches_the_checker, "lost response"),
        ],
    ),
    Exercise(
        id="01_api_communication/quiz",
        check=lambda a: checks.check_quiz(a),
        answer_key=lambda: dict(key.QUIZ_ANSWERS),
        gallery=[
            WrongAnswer("unanswered", "the starter answers nothing", lambda: {}, "reused-key"),
            WrongAnswer("409 for a reused key", "409 is for a request still in flight; another "
                        "payload is 422", lambda: {**key.QUIZ_ANSWERS, "reused-key": 1},
                        "reused-key"),
            WrongAnswer("a new key on 409", "a new key is the double charge",
                        lambda: {**key.QUIZ_ANSWERS, "in-flight": 1}, "in-flight"),
            WrongAnswer("mean ignoring the cap", "uniform(100, 1200) has mean 650 only without "
                        "the cap", lambda: {**key.QUIZ_ANSWERS, "decorrelated-mean": 650},
                        "decorrelated-mean"),
            WrongAnswer("charge on takeover", "the first charge may exist: that is the double "
                        "charge", lambda: {**key.QUIZ_ANSWERS, "takeover": 0}, "takeover"),
        ],
    ),
]
