"""Wrong answers for ``01_api_communication``: charge handlers that still double-charge.

Each builder returns a handler ``(ledger, key, request) -> Reply`` as a learner would
write it in the notebook's starter cell.
"""

from __future__ import annotations

from labsupport import api_communication as api
from labsupport.checks import api_communication as checks
from labsupport.solutions.api_communication import idempotent_charge

from . import Exercise, WrongAnswer


def starter():
    """The notebook's untouched starter cell."""
    def my_charge_handler(ledger: api.Ledger, key: str | None, request: api.ChargeRequest) -> api.Reply:
        # STARTER: charges on every request, exactly like the service that double-charged above.
        charge = ledger.charge(request, key=key)
        return api.Reply(201, charge)

    my_answer = my_charge_handler
    return my_answer


def check_then_insert():
    """Looks the key up, and charges when it is not there: two racing retries both charge."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        fp = api.fingerprint(request)
        record = ledger.get_key(key)
        if record is not None:
            if record.fingerprint != fp:
                return api.Reply(422, {"error": "different payload"})
            return record.reply or api.Reply(409, {"error": "in progress"})
        reply = api.Reply(201, ledger.charge(request, key=key))
        ledger.save_response(key, fp, reply)
        return reply
    return handler


def no_fingerprint():
    """Claims and replays, but never compares the payload: another amount gets the old charge."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        if not ledger.claim_key(key, "-"):
            record = ledger.get_key(key)
            if record is None or record.in_flight or record.reply is None:
                return api.Reply(409, {"error": "in progress"})
            return record.reply
        reply = api.Reply(201, ledger.charge(request, key=key))
        ledger.save_response(key, "-", reply)
        return reply
    return handler


def charges_without_key():
    """The answer key, except that a request with no key is charged instead of refused."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(201, ledger.charge(request))
        return idempotent_charge(ledger, key, request)
    return handler


def replays_while_in_flight():
    """Returns record.reply even while the first request is in flight: None, a 500."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        fp = api.fingerprint(request)
        if not ledger.claim_key(key, fp):
            record = ledger.get_key(key)
            if record is not None and record.fingerprint != fp:
                return api.Reply(422, {"error": "different payload"})
            return record.reply if record is not None else None
        reply = api.Reply(201, ledger.charge(request, key=key))
        ledger.save_response(key, fp, reply)
        return reply
    return handler


def never_saves_response():
    """Claims the key and charges, but never stores the response: a retry can only get 409."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        fp = api.fingerprint(request)
        if not ledger.claim_key(key, fp):
            record = ledger.get_key(key)
            if record is not None and record.fingerprint != fp:
                return api.Reply(422, {"error": "different payload"})
            return api.Reply(409, {"error": "in progress"})
        return api.Reply(201, ledger.charge(request, key=key))
    return handler


def hard_coded():
    """Answers 201 with a made-up charge and never charges: no double charge, no payment."""
    def handler(ledger, key, request):
        if key is None:
            return api.Reply(400, {"error": "Idempotency-Key required"})
        return api.Reply(201, {"charge_id": "ch_0000000000000000", **request.as_dict()})
    return handler


EXERCISES = [
    Exercise(
        id="01_api_communication",
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: idempotent_charge,
        gallery=[
            WrongAnswer("starter", "charges on every request: the lost response plus a retry "
                        "is the double charge of the scenario", starter, "lost response"),
            WrongAnswer("check-then-insert", "two retries arriving together both find no key "
                        "and both charge", check_then_insert, "concurrent requests"),
            WrongAnswer("no payload fingerprint", "a reused key with another amount silently "
                        "returns the first charge instead of 422", no_fingerprint,
                        "different amount"),
            WrongAnswer("charges without a key", "a client that forgot the header can still "
                        "double-charge; the draft says 400", charges_without_key,
                        "no Idempotency-Key"),
            WrongAnswer("replays record.reply while in flight", "returns None while the first "
                        "request runs: the service answers 500", replays_while_in_flight,
                        "concurrent requests"),
            WrongAnswer("never saves the response", "every retry after a lost response gets "
                        "409 and never learns the charge", never_saves_response,
                        "lost response"),
            WrongAnswer("hard-coded reply", "answers 201 without charging: two keys are two "
                        "payments and neither is taken", hard_coded, "two different keys"),
        ],
    ),
]
