"""Answer key for the exercise of ``01_api_communication.ipynb``: an idempotent charge handler.

Follows the IETF draft ``draft-ietf-httpapi-idempotency-key-header``: a missing key is
400, the same key with another payload is 422, a retry while the first request is still
in flight is 409, and a retry of a finished request replays the stored response.
"""

from __future__ import annotations

from labsupport.api_communication import ChargeRequest, Ledger, Reply, fingerprint


def idempotent_charge(ledger: Ledger, key: str | None, request: ChargeRequest) -> Reply:
    """Charge at most once per Idempotency-Key; replay the first response on a retry."""
    if key is None:
        return Reply(400, {"error": "this endpoint requires an Idempotency-Key header"})
    fp = fingerprint(request)
    if not ledger.claim_key(key, fp):  # one atomic INSERT: exactly one request wins the key
        record = ledger.get_key(key)
        if record is None:  # expired between our claim and our read: ask for a retry
            return Reply(409, {"error": "key changed state, retry"})
        if record.fingerprint != fp:
            return Reply(422, {"error": "Idempotency-Key reused with a different payload"})
        if record.in_flight or record.reply is None:
            return Reply(409, {"error": "a request with this Idempotency-Key is in progress"})
        return record.reply  # replay: same status, same body, no second charge
    try:  # the card network's own key: a takeover after a crash finds the first charge
        reply = Reply(201, ledger.charge(request, key=key, processor_key=key))
    except Exception:
        ledger.release_key(key)  # nothing was charged: let a retry try again
        raise
    ledger.save_response(key, fp, reply)  # durable: survives a restart
    return reply
