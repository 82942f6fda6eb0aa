"""Tests for notebook 01's modules: labsupport.api_communication and its layers.

The backoff formulas are checked against the AWS blog's definitions and against sample
statistics; the contention simulation against a closed form (no jitter, no spread: one
winner per round) and for the blog's ordering; the ledger (claim_key, finish) against rows
read with plain SQL; the payment service over real HTTP on 127.0.0.1, for every status code
the IETF idempotency-key draft names; the checker, which judges in processes of its own.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from labsupport import api_communication as api
from labsupport import exercises as ex
from labsupport import fresh_process
from labsupport.checks import api_communication as checks
from labsupport.explore import api_communication as explore
from labsupport.services import api_communication as services
from labsupport.solutions.api_communication import idempotent_charge

# --- backoff formulas -------------------------------------------------------------------


def test_expo_is_capped_exponential():
    assert [api.expo(n, 10, 1000) for n in range(8)] == [10, 20, 40, 80, 160, 320, 640, 1000]
    assert api.expo(500, 0.1, 20.0) == 20.0  # no overflow for a huge attempt number
    with pytest.raises(ValueError):
        api.expo(-1, 1, 1)


@pytest.mark.parametrize("attempt", [0, 3, 9])
def test_jitter_ranges_and_means(attempt):
    rng = np.random.default_rng(0)
    e = api.expo(attempt, 10.0, 1000.0)
    none = [api.backoff_delay(attempt, "none", 10.0, 1000.0, rng) for _ in range(20)]
    full = np.array([api.backoff_delay(attempt, "full", 10.0, 1000.0, rng) for _ in range(20000)])
    equal = np.array([api.backoff_delay(attempt, "equal", 10.0, 1000.0, rng) for _ in range(20000)])
    assert none == [e] * 20
    assert full.min() >= 0 and full.max() <= e
    assert equal.min() >= e / 2 and equal.max() <= e
    # U(0, e) has mean e/2 and sd e/sqrt(12); e/2 + U(0, e/2) has mean 3e/4
    assert abs(full.mean() - e / 2) < 5 * e / np.sqrt(12) / np.sqrt(len(full))
    assert abs(equal.mean() - 3 * e / 4) < 5 * (e / 2) / np.sqrt(12) / np.sqrt(len(equal))


def test_unknown_strategy_rejected():
    with pytest.raises(ValueError):
        api.backoff_delay(0, "random", 1, 10, np.random.default_rng(0))  # type: ignore[arg-type]


def test_decorrelated_jitter_follows_the_blogs_formula():
    """sleep = min(cap, random_between(base, sleep * 3)), starting from sleep = base: checked
    draw by draw against the formula written out with numpy's generator on the same seed."""
    base, cap = 10.0, 1000.0
    ours, reference = np.random.default_rng(5), np.random.default_rng(5)
    sleep, previous = base, None
    for attempt in range(40):
        got = api.backoff_delay(attempt, "decorrelated", base, cap, ours, previous=previous)
        sleep = min(cap, reference.uniform(base, sleep * 3))
        assert got == pytest.approx(sleep)
        assert base <= got <= cap
        previous = got


def test_decorrelated_jitter_grows_about_3x_then_stays_below_the_cap():
    # From sleep s the next is U(base, 3s): mean (base + 3s)/2, so about 1.5x per step early on.
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(2000):
        previous, path = None, []
        for attempt in range(12):
            previous = api.backoff_delay(attempt, "decorrelated", 10.0, 1000.0, rng,
                                         previous=previous)
            path.append(previous)
        runs.append(path)
    means = np.array(runs).mean(axis=0)
    assert means[0] == pytest.approx((10 + 30) / 2, rel=0.05)  # U(10, 30)
    assert means[1] == pytest.approx((10 + 3 * 20) / 2, rel=0.05)  # E[U(10, 3s)], E[s] = 20
    assert np.array(runs).max() <= 1000.0 and means[-1] > 300


# --- contention simulation ----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 30])
def test_no_jitter_without_spread_matches_closed_form(n):
    # Everyone stays in lockstep: one winner per round, so round k has n - k callers.
    base, cap, call = 10.0, 300.0, 10.0
    r = explore.simulate_contention(n, "none", base_ms=base, cap_ms=cap, call_ms=call, call_spread=0.0)
    assert r.calls == n * (n + 1) // 2
    expected_end = n * call + sum(min(cap, base * 2**k) for k in range(n - 1))
    assert r.completion_ms == pytest.approx(expected_end)
    assert len(r.finish_times) == n


def test_every_client_finishes_and_calls_at_least_clients():
    for s in api.STRATEGIES:
        r = explore.simulate_contention(40, s, seed=3)
        assert len(r.finish_times) == 40 and r.calls >= 40
        assert np.all(np.diff(r.finish_times) > 0)  # one write at a time


@pytest.mark.parametrize("clients", [20, 50, 100])
def test_full_jitter_beats_no_jitter_on_time_and_calls(clients):
    sweep = explore.contention_sweep([clients], seeds=5)
    none, full = sweep["none"], sweep["full"]
    assert full["completion_ms"][0] * 3 < none["completion_ms"][0]  # several times faster
    assert full["calls"][0] < none["calls"][0]
    for jittered in ("equal", "decorrelated"):  # every jitter beats none, as in the blog
        assert sweep[jittered]["completion_ms"][0] < none["completion_ms"][0]


def test_contention_view_fills_figure_and_summarises():
    fig = explore.contention_figure()
    text = explore.contention_view(fig, clients=30, strategy="equal", seed=1)
    assert "30 clients" in text and "equal jitter" in text
    assert len(fig.data[0].y) == 30 and len(fig.data[1].x) == 30
    assert fig.data[0].name == "equal jitter"


# --- the ledger: explicit SQL on the file is the reference ---------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """A plain connection in autocommit mode, as claim_key and finish expect."""
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    db.executescript(api.SCHEMA)
    return db


def _sql(path: Path, query: str, *params) -> list[tuple]:
    """Rows read straight from the SQLite file, not through the code under test."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(query, params).fetchall()


def _count(path: Path, table: str, order_id: str | None = None) -> int:
    assert table in ("charges", "payments", "idempotency_keys")
    if order_id is None:
        return _sql(path, f"SELECT COUNT(*) FROM {table}")[0][0]
    return _sql(path, f"SELECT COUNT(*) FROM {table} WHERE order_id = ?", order_id)[0][0]


def _key_row(path: Path, key: str) -> tuple | None:
    rows = _sql(path, "SELECT fingerprint, status, response_code, response_body, created_at, "
                      "expires_at, locked_at FROM idempotency_keys WHERE key = ?", key)
    return rows[0] if rows else None


def test_claim_key_outcomes_and_the_row_it_writes(tmp_path: Path):
    """The four outcomes, each with the row it leaves (read with plain SQL): a mismatch is
    a mismatch whether the key is in flight, done, or long past its lease."""
    path = tmp_path / "k.sqlite"
    with closing(_connect(path)) as db:
        assert api.claim_key(db, "k", "fp", 100.0, lease=5.0, ttl=50.0) == "claimed"
        assert not db.in_transaction  # committed: nothing held after the call
        claimed = ("fp", "in_flight", None, None, 100.0, 150.0, 100.0)
        assert _key_row(path, "k") == claimed
        assert api.claim_key(db, "k", "fp", 101.0, lease=5.0) == "in_flight"
        assert api.claim_key(db, "k", "other", 101.0, lease=5.0) == "mismatch"
        assert api.claim_key(db, "k", "other", 999.0, lease=5.0) == "mismatch"  # lease over
        assert _key_row(path, "k") == claimed  # losers change nothing
        db.execute("UPDATE idempotency_keys SET status = 'done', response_code = 201, "
                   "response_body = '{}', locked_at = NULL WHERE key = 'k'")
        done = _key_row(path, "k")
        assert api.claim_key(db, "k", "fp", 102.0, lease=5.0) == "replay"
        assert api.claim_key(db, "k", "other", 102.0, lease=5.0) == "mismatch"  # a done key
        assert api.claim_key(db, "k", "other", 1e6, lease=5.0) == "mismatch"
        assert api.claim_key(db, "k", "fp", 1e6, lease=5.0) == "replay"  # done: never taken over
        assert _key_row(path, "k") == done and not db.in_transaction
        assert api.claim_key(db, "k2", "fp", 0.0, lease=5.0) == "claimed"  # default TTL: 24 h
        assert _key_row(path, "k2")[5] == 24 * 3600.0


def test_claim_key_lease_boundary(tmp_path: Path):
    """A claim is held for exactly ``lease`` s: taken over when locked_at <= now - lease,
    and the takeover holds it for a new lease from its own time."""
    with closing(_connect(tmp_path / "k.sqlite")) as db:
        assert api.claim_key(db, "k", "fp", 1000.0, lease=2.0) == "claimed"
        just_before = math.nextafter(1002.0, 0.0)
        assert api.claim_key(db, "k", "fp", just_before, lease=2.0) == "in_flight"
        assert api.claim_key(db, "k", "fp", 1002.0, lease=2.0) == "claimed"  # exactly the lease
        assert _key_row(tmp_path / "k.sqlite", "k")[6] == 1002.0  # locked_at moved to now
        assert _key_row(tmp_path / "k.sqlite", "k")[4] == 1000.0  # created_at kept
        assert api.claim_key(db, "k", "fp", 1002.0, lease=2.0) == "in_flight"
        assert api.claim_key(db, "k", "fp", math.nextafter(1004.0, 0.0), lease=2.0) == "in_flight"
        assert api.claim_key(db, "k", "fp", 1004.0, lease=2.0) == "claimed"


def test_claim_is_atomic_under_threads(tmp_path: Path):
    ledger = api.Ledger(tmp_path / "l.sqlite")
    barrier = threading.Barrier(20)

    def claim(_: int) -> str:
        barrier.wait()
        return ledger.claim("k-1", "fp")

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(claim, range(20)))
    assert sorted(outcomes) == ["claimed"] + ["in_flight"] * 19
    assert _sql(ledger.path, "SELECT key, status, response_code FROM idempotency_keys") == [
        ("k-1", "in_flight", None)]


def test_keys_expire_after_ttl(tmp_path: Path):
    now = [1000.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", key_ttl=api.STRIPE_KEY_TTL, clock=lambda: now[0])
    reply = api.Reply(201, {"charge_id": "ch_1"})
    assert ledger.claim("k", "a") == "claimed"
    ledger.finish("k", {"charge_id": "ch_1", "order_id": "o", "amount_cents": 5}, reply)
    now[0] = 1000.0 + api.STRIPE_KEY_TTL - 1
    assert ledger.claim("k", "a") == "replay" and ledger.stored_reply("k") == reply
    now[0] = 1000.0 + api.STRIPE_KEY_TTL  # exactly 24 h after the first use: expired
    assert ledger.claim("k", "b") == "claimed"  # a fresh claim: the old record is gone
    assert _key_row(ledger.path, "k")[:3] == ("b", "in_flight", None)
    assert ledger.stored_reply("k") is None
    assert _count(ledger.path, "payments") == 1  # the books keep the payment


def test_ledger_survives_reopen_and_release(tmp_path: Path):
    path = tmp_path / "l.sqlite"
    a = api.Ledger(path)
    a.charge(api.ChargeRequest("o-1", 100), key="k")
    assert a.claim("k2", "fp") == "claimed"
    a.release("k2")
    assert a.claim("k3", "fp") == "claimed"
    a.finish("k3", {"charge_id": "ch_3", "order_id": "o-3", "amount_cents": 7},
             api.Reply(201, {"charge_id": "ch_3"}))
    a.release("k3")  # release never forgets a finished key
    b = api.Ledger(path)  # a new process would do exactly this
    assert len(b.charges("o-1")) == 1 == _count(path, "charges", "o-1")
    assert _key_row(path, "k2") is None
    assert _key_row(path, "k3")[:3] == ("fp", "done", 201)
    assert b.claim("k2", "fp") == "claimed" and b.claim("k3", "fp") == "replay"
    assert b.stored_reply("k3") == api.Reply(201, {"charge_id": "ch_3"})
    assert b.payments() == [{"charge_id": "ch_3", "order_id": "o-3", "amount_cents": 7,
                             "idempotency_key": "k3"}]


class _FailingConnection:
    """A sqlite3 connection that raises just before its ``fail_before``-th statement
    (counting BEGIN and COMMIT): a crash in the middle of a transaction."""

    def __init__(self, db: sqlite3.Connection, fail_before: int) -> None:
        self.db, self.fail_before, self.statements = db, fail_before, 0

    def execute(self, sql: str, params=()):
        if not sql.lstrip().upper().startswith("ROLLBACK"):
            self.statements += 1
            if self.statements == self.fail_before:
                raise sqlite3.OperationalError(f"injected failure before: {sql[:30]}")
        return self.db.execute(sql, params)


@pytest.mark.parametrize("fail_before, statement", [(2, "INSERT payments"),
                                                    (3, "UPDATE key"), (4, "COMMIT")])
def test_finish_is_one_transaction(tmp_path: Path, fail_before, statement):
    """A failure before the 2nd statement (or any later one before COMMIT) leaves neither
    the payment nor the stored response; a clean finish writes both, once."""
    path = tmp_path / "f.sqlite"
    charge = {"charge_id": "ch_9", "order_id": "o-9", "amount_cents": 900}
    reply = api.Reply(201, {"charge_id": "ch_9", "amount_cents": 900})
    with closing(_connect(path)) as db:
        assert api.claim_key(db, "k", "fp", 0.0, lease=5.0) == "claimed"
        failing = _FailingConnection(db, fail_before)
        with pytest.raises(sqlite3.OperationalError, match="injected"):
            api.finish(failing, "k", charge, reply)  # type: ignore[arg-type]
        assert failing.statements == fail_before  # it did fail where we meant it to
        assert not db.in_transaction  # rolled back: the write lock is not left held
        assert _count(path, "payments") == 0
        assert _key_row(path, "k")[1:4] == ("in_flight", None, None)
        api.finish(db, "k", charge, reply)
        api.finish(db, "k", charge, reply)  # a second finish (a takeover) records nothing new
    assert _sql(path, "SELECT * FROM payments") == [("ch_9", "o-9", 900, "k")]
    status, code, body = _key_row(path, "k")[1:4]
    assert (status, code, json.loads(body)) == ("done", 201, reply.body)
    assert _key_row(path, "k")[6] is None  # done keys hold no lock


def test_concurrent_takeovers_have_one_winner(tmp_path):
    now = [0.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", lease=1.0, clock=lambda: now[0])
    assert ledger.claim("k", "fp") == "claimed"
    now[0] = 5.0
    barrier = threading.Barrier(20)

    def claim(_: int) -> str:
        barrier.wait()
        return ledger.claim("k", "fp")

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(claim, range(20)))
    assert sorted(outcomes) == ["claimed"] + ["in_flight"] * 19
    assert _key_row(ledger.path, "k")[6] == 5.0


def test_a_claim_whose_lease_ran_out_is_taken_over_once(tmp_path):
    now = [1000.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", lease=2.0, clock=lambda: now[0])
    assert ledger.claim("k", "fp") == "claimed"
    now[0] += 1.9
    assert ledger.claim("k", "fp") == "in_flight"  # still leased: the first may be running
    assert ledger.claim("k", "other") == "mismatch"  # another payload never takes it over
    now[0] += 0.2
    assert ledger.claim("k", "fp") == "claimed"  # lease over: this retry takes the claim
    assert ledger.claim("k", "fp") == "in_flight"  # and holds it for a new lease
    reply = api.Reply(201, {"charge_id": "ch_1"})
    ledger.finish("k", {"charge_id": "ch_1", "order_id": "o", "amount_cents": 1}, reply)
    now[0] += 10
    assert ledger.claim("k", "fp") == "replay"  # done keys are replayed, never taken over
    assert ledger.stored_reply("k") == reply


def test_the_card_network_charges_once_per_processor_key(tmp_path):
    ledger = api.Ledger(tmp_path / "l.sqlite")
    request = api.ChargeRequest("o-9", 1200)
    first = ledger.charge(request, key="k", processor_key="k")
    again = ledger.charge(request, key="k", processor_key="k")  # a takeover asks again
    assert again == first and _count(ledger.path, "charges", "o-9") == 1
    assert ledger.find_charge("k") == first and ledger.find_charge("nope") is None
    ledger.charge(request)
    ledger.charge(request)  # without a processor key every call charges: the double charge
    assert _count(ledger.path, "charges", "o-9") == 3 == len(ledger.charges("o-9"))
    assert _count(ledger.path, "payments") == 0  # the card network does not keep our books


def test_fingerprint_is_sha256_of_canonical_json():
    # The references: canonical strings written out by hand, digests from coreutils'
    # sha256sum (printf '%s' '<string>' | sha256sum).
    body = {"order_id": "o-1", "amount_cents": 1500, "currency": "eur"}
    assert api.fingerprint(body) == (
        "902d0b084f35210189324f28bd016591eec0b3ad7ade9a3fe20fb3ee394fb8a5")  # of
    # {"amount_cents":1500,"currency":"eur","order_id":"o-1"}
    assert api.fingerprint(api.ChargeRequest("o-1", 1500).as_dict()) == api.fingerprint(body)
    nested = {"b": "\u00e9", "a": {"y": [{"q": 3, "p": 2}], "x": 1}}  # sorted at every depth
    assert api.fingerprint(nested) == (
        "5c10a692240e6b496533211d4793165146149aeaf09232eeb43573cae5ba4086")  # of
    # {"a":{"x":1,"y":[{"p":2,"q":3}]},"b":"\u00e9"}
    assert api.fingerprint({**body, "amount_cents": 2500}) != api.fingerprint(body)
    assert api.fingerprint({"a": [1, 2]}) != api.fingerprint({"a": [2, 1]})  # lists keep order


def test_parse_idempotency_key():
    assert services.parse_idempotency_key('"abc"') == "abc"  # structured-field string
    assert services.parse_idempotency_key("abc") == "abc"
    assert services.parse_idempotency_key(None) is None
    assert services.parse_idempotency_key('""') is None


# --- the fault switches ------------------------------------------------------------------------


def test_faulty_ledger_card_network_down_raises_and_takes_no_money(tmp_path: Path):
    faults = services.Faults(fail_charges=2)
    ledger = services.FaultyLedger(tmp_path / "l.sqlite", faults)
    request = api.ChargeRequest("o-f", 700)
    for left in (1, 0):
        with pytest.raises(services.CardNetworkDown):
            ledger.charge(request, key="k", processor_key="k")
        assert faults.fail_charges == left and _count(ledger.path, "charges") == 0
    assert faults.lost == 0  # a refused charge is not a lost response
    charge = ledger.charge(request, key="k", processor_key="k")  # the network is back
    assert _sql(ledger.path, "SELECT charge_id, order_id, amount_cents, processor_key "
                             "FROM charges") == [(charge["charge_id"], "o-f", 700, "k")]


def test_faulty_ledger_in_the_kernel_never_kills_its_process(tmp_path: Path):
    faults = services.Faults()
    ledger = services.FaultyLedger(tmp_path / "l.sqlite", faults)  # own_process=False
    for point in services.CRASH_POINTS:  # we are still here after each point: no SIGKILL
        faults.crash_after = point
        key = f"k-{point}"
        assert ledger.claim(key, "fp") == "claimed"
        charge = ledger.charge(api.ChargeRequest(f"o-{point}", 5), key=key, processor_key=key)
        ledger.finish(key, charge, api.Reply(201, charge))
    assert _count(ledger.path, "charges") == _count(ledger.path, "payments") == 3


# --- the payment service over HTTP ------------------------------------------------------------


@pytest.fixture
def payments(tmp_path: Path):
    ledger = api.Ledger(tmp_path / "ledger.sqlite", processor_delay=0.02)
    service, server = services.start_payment_service(ledger, idempotent_charge, name="test-payments")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield service, server, client
    server.stop()
    assert not server.running


def _charge(client: httpx.Client, key: str | None, order: str = "o-1", amount: int = 1500,
            **kw) -> httpx.Response:
    headers = {"Idempotency-Key": f'"{key}"'} if key else {}
    return client.post("/charges", json={"order_id": order, "amount_cents": amount},
                       headers=headers, **kw)


def test_the_service_hands_its_handler_a_faulty_ledger_on_the_same_file(payments, tmp_path):
    service, _, _ = payments
    assert isinstance(service.ledger, services.FaultyLedger)
    assert service.ledger.path == tmp_path / "ledger.sqlite"
    assert service.ledger.processor_delay == 0.02 and not service.ledger.own_process
    assert service.ledger.faults is service.faults


def test_first_request_201_and_retry_replays(payments):
    service, _, client = payments
    first = _charge(client, "k-1")
    again = _charge(client, "k-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    db = service.ledger.path
    assert _count(db, "charges", "o-1") == 1
    assert _sql(db, "SELECT charge_id, idempotency_key FROM payments") == [
        (first.json()["charge_id"], "k-1")]


def test_same_key_other_payload_422(payments):
    service, _, client = payments
    assert _charge(client, "k-2", amount=1500).status_code == 201
    assert _charge(client, "k-2", amount=2500).status_code == 422
    assert _count(service.ledger.path, "charges", "o-1") == 1


def test_missing_key_400_and_bad_body_400(payments):
    service, _, client = payments
    assert _charge(client, None).status_code == 400
    assert client.post("/charges", content=b"{not json", headers={"Idempotency-Key": "x"}).status_code == 400
    assert client.post("/charges", json={"order_id": "o", "amount_cents": -5},
                       headers={"Idempotency-Key": "x"}).status_code == 400
    assert _charge(client, "k" * 300).status_code == 400
    assert _count(service.ledger.path, "charges") == 0
    assert _count(service.ledger.path, "idempotency_keys") == 0


def test_bad_bodies_are_400_problems_naming_the_field(payments):
    _, _, client = payments
    for body, field in ((b"", "body"), (b"[]", "body"), (b'{"amount_cents": 5}', "order_id"),
                        (b'{"order_id": "o", "amount_cents": "1500"}', "amount_cents"),
                        (b'{"order_id": "o", "amount_cents": true}', "amount_cents"),
                        (b'{"order_id": "o", "amount_cents": 5, "currency": "euro"}', "currency")):
        r = client.post("/charges", content=body, headers={"Idempotency-Key": '"k-bad"',
                                                           "Content-Type": "application/json"})
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
        assert field in r.json()["detail"], (body, r.json())


def test_faults_endpoint_validates_and_refuses_crashes_in_the_kernel(payments):
    """POST /faults: crash_after is refused (400) for a service in the kernel, whatever the
    point; counts must be integers >= 0; a refused request changes no switch."""
    service, _, client = payments

    def refused(body) -> bool:
        r = client.post("/faults", json=body)
        return r.status_code == 400 and r.headers["content-type"] == "application/problem+json"

    assert all(refused({"crash_after": p}) for p in (*services.CRASH_POINTS, "nowhere"))
    for bad in (-1, "1", True, 1.5, None):
        assert refused({"lose_next": bad}) and refused({"fail_charges": bad}), bad
    assert refused({"lose_next": 1, "crash_after": "charge"})  # valid parts are not applied
    assert refused({"lose_next": 1, "fail_charges": -1})
    f = service.faults
    assert (f.lose_next, f.fail_charges, f.crash_after) == (0, 0, None)
    ok = client.post("/faults", json={"fail_charges": 1, "crash_after": None})
    assert ok.status_code == 200
    assert ok.json() == {"lose_next": 0, "fail_charges": 1, "crash_after": None, "lost": 0}
    # and the switch works: the next charge fails with nothing taken, the retry charges once
    down = _charge(client, "k-down", order="o-down")
    assert down.status_code == 500 and "CardNetworkDown" in down.json()["detail"]
    assert _count(service.ledger.path, "charges") == 0
    retry = _charge(client, "k-down", order="o-down")
    assert retry.status_code == 201 and _count(service.ledger.path, "charges", "o-down") == 1


def test_openapi_describes_the_charge_body_and_the_key_header(payments):
    """/docs and generated clients read /openapi.json: the body must be declared there
    (the handler reads the raw body, so FastAPI cannot infer it)."""
    _, _, client = payments
    operation = client.get("/openapi.json").json()["paths"]["/charges"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"order_id", "amount_cents", "currency"}
    assert set(schema["required"]) == {"order_id", "amount_cents"}
    assert schema["properties"]["amount_cents"]["type"] == "integer"
    assert [p["name"] for p in operation["parameters"]] == ["Idempotency-Key"]


def test_openapi_describes_the_order_body():
    service = services.OrderService("http://127.0.0.1:9", work_seconds=0.0)
    try:
        paths = service.app.openapi()["paths"]
    finally:
        service.close()
    for path in ("/orders", "/orders/async"):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["amount_cents"]
        assert schema["properties"]["amount_cents"]["type"] == "integer"


def test_retry_while_in_flight_409(tmp_path: Path):
    ledger = api.Ledger(tmp_path / "slow.sqlite", processor_delay=0.6)  # a slow card network
    service, server = services.start_payment_service(ledger, idempotent_charge, name="test-slow")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client, ThreadPoolExecutor(1) as pool:
            first = pool.submit(_charge, client, "k-3")
            deadline = time.monotonic() + 5
            while _key_row(ledger.path, "k-3") is None and time.monotonic() < deadline:
                time.sleep(0.01)  # wait until the first request has claimed the key
            second = _charge(client, "k-3")
            assert second.status_code == 409
            assert first.result().status_code == 201
        assert _count(ledger.path, "charges") == 1 == _count(ledger.path, "payments")
    finally:
        server.stop()


def test_twenty_concurrent_requests_one_charge(payments):
    service, server, _ = payments
    barrier = threading.Barrier(20)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            barrier.wait()
            return _charge(c, "k-4", order="o-4")

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(one, range(20)))
    codes = [r.status_code for r in responses]
    assert _count(service.ledger.path, "charges", "o-4") == 1
    assert _count(service.ledger.path, "payments", "o-4") == 1
    assert set(codes) <= {201, 409} and 201 in codes
    (charge_id,), = _sql(service.ledger.path, "SELECT charge_id FROM charges")
    assert all(r.json()["charge_id"] == charge_id for r in responses if r.status_code == 201)


def test_lost_response_naive_double_charges_idempotent_does_not(tmp_path: Path):
    for handler in (api.naive_charge, idempotent_charge):
        ledger = api.Ledger(tmp_path / f"{handler.__name__}.sqlite")
        service, server = services.start_payment_service(ledger, handler, name="test-lost")
        try:
            service.faults.lose_next = 1
            policy = api.RetryPolicy(max_attempts=4, base=0.01, cap=0.05, timeout=1.0)
            result = api.post_with_retries(f"{server.url}/charges",
                                           {"order_id": "o-9", "amount_cents": 100},
                                           key="k-9", policy=policy)
            outcomes = [a.outcome for a in result.attempts]
            assert outcomes[0] == "timeout" and outcomes[-1] == "201"  # lost, then answered
            # naive: one charge per attempt that reached the handler; idempotent: one in all
            expected = len(outcomes) if handler is api.naive_charge else 1
            assert _count(ledger.path, "charges", "o-9") == expected >= 1
            assert service.faults.lost == 1
        finally:
            server.stop()


def test_restart_keeps_keys(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    service, server = services.start_payment_service(api.Ledger(path), idempotent_charge, name="test-restart")
    with httpx.Client(timeout=10) as client:
        first = client.post(f"{server.url}/charges", json={"order_id": "o-r", "amount_cents": 5},
                            headers={"Idempotency-Key": "k-r"})
        server.stop()
        _, server2 = services.start_payment_service(api.Ledger(path), idempotent_charge, name="test-restart")
        try:
            again = client.post(f"{server2.url}/charges", json={"order_id": "o-r", "amount_cents": 5},
                                headers={"Idempotency-Key": "k-r"})
        finally:
            server2.stop()
    assert again.status_code == first.status_code == 201 and again.json() == first.json()
    assert _count(path, "charges", "o-r") == 1 == _count(path, "payments", "o-r")


def test_retries_stop_on_client_errors(payments):
    _, server, _ = payments
    result = api.post_with_retries(f"{server.url}/charges", {"order_id": "o", "amount_cents": 1},
                                   key=None, policy=api.RetryPolicy(max_attempts=4))
    assert result.status == 400 and len(result.attempts) == 1


def test_serve_replaces_previous_server_of_same_name(tmp_path: Path):
    ledger = api.Ledger(tmp_path / "l.sqlite")
    _, a = services.start_payment_service(ledger, name="test-dup")
    _, b = services.start_payment_service(ledger, name="test-dup")
    try:
        assert not a.running and b.running
        assert [h for h in services.running_servers() if h.name == "test-dup"] == [b]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{a.url}/health", timeout=2)
        assert httpx.get(f"{b.url}/health", timeout=5).json()["status"] == "ok"
    finally:
        b.stop()


# --- order service: sync vs async --------------------------------------------------------------


def test_sync_and_async_order_paths(tmp_path: Path):
    _, pay = services.start_payment_service(api.Ledger(tmp_path / "l.sqlite"), idempotent_charge,
                                       name="test-pay")
    orders = services.OrderService(pay.url, work_seconds=0.3)
    srv = services.serve(orders.app, "test-orders")
    try:
        with httpx.Client() as client:
            sync = services.order_sync(srv.url, 1200, client)
            asyn = services.order_async(srv.url, 1200, client, poll_every=0.02)
            r = client.post(f"{srv.url}/orders/async", json={"amount_cents": 5})
            assert r.status_code == 202 and r.headers["Location"].startswith("/orders/ord_")
            assert client.get(f"{srv.url}/orders/nope").status_code == 404
            assert client.post(f"{srv.url}/orders", json={"amount_cents": "x"}).status_code == 400
        assert sync.caller_waits >= 0.3 and sync.work >= 0.3
        assert asyn.caller_waits < sync.caller_waits and asyn.until_done >= 0.3 and asyn.polls >= 1
        assert all(o.status == "paid" for o in orders.orders.values() if o.finished_at)
    finally:
        srv.stop()
        pay.stop()
        orders.close()


# --- the exercise checker ------------------------------------------------------------------------
# The checker sends the handler to service processes of their own (fresh_process.program),
# so the handlers below are defined at the top level of this module, as in a notebook cell.
# The starter is written out here (not api.naive_charge) so that it prints to the log.

ROW_NAMES = [name for name, _, _ in checks.ROWS]


def charges_every_time(ledger, key, request):
    """The notebook's starter: charges on every request and ignores the key."""
    print(f"charging {request.order_id}")  # shows up in run_row's log of the services
    return api.Reply(201, ledger.charge(request, key=key))


def raises_boom(ledger, key, request):
    raise RuntimeError("boom")


def fails_on_two_rows(ledger, key, request):
    """The answer key, except on two rows, told apart by the order number's digits (row i
    of the check uses a number of i + 2 digits): it raises on 'same key, different amount'
    and returns None on '20 concurrent requests', as `return record.reply` did."""
    digits = request.order_id.removeprefix("order-")
    if digits.isdigit() and len(digits) == 4:
        raise RuntimeError("amount changed")
    if digits.isdigit() and len(digits) == 3:
        return None
    return idempotent_charge(ledger, key, request)


def _rows(result) -> dict:
    return {c.name: c for c in result.checks}


def _no_ids(text: str) -> str:
    return re.sub(r"ch_[0-9a-f]{16}", "ch_…", text)


def test_checker_passes_reference(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    servers_before = list(services.running_servers())
    good = checks.check_exercise(idempotent_charge, solution_mode=True)
    assert good.passed and [c.name for c in good.checks] == ROW_NAMES
    # judged out of the kernel: no server in this process, before or after
    assert list(services.running_servers()) == servers_before


def test_checker_fails_starter_and_run_row_gives_the_same_verdict(tmp_path: Path, monkeypatch,
                                                                  capsys):
    progress = tmp_path / "progress.json"
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(progress))
    bad = checks.check_exercise(charges_every_time)
    assert not bad.passed and [c.name for c in bad.checks] == ROW_NAMES
    # It double-charges wherever a key sees two requests; with the card network down the
    # first request takes nothing, so that row alone sees one charge and passes.
    assert {c.name for c in bad.checks if not c.passed} == set(ROW_NAMES) - {
        "card network down for the first attempt"}
    # one charge per request that reached the handler: the lost one and both retries
    assert "3 charge(s) for key k-" in _rows(bad)["lost response, then 2 retries"].found
    assert "20 charge(s) for key k-" in _rows(bad)["20 concurrent requests, one key"].found
    recorded = ex.load_progress(progress)
    capsys.readouterr()
    row = checks.run_row(charges_every_time, "no Idempotency-Key")
    printed = capsys.readouterr().out
    assert row.name == "no Idempotency-Key header" and not row.passed
    assert row.found.startswith("201 ch_") and row.found.endswith("; 1 charge(s)")
    full = _rows(bad)["no Idempotency-Key header"]  # same seed: the same input and verdict
    assert (_no_ids(row.found), row.hint) == (_no_ids(full.found), full.hint)
    assert "charging order-" in printed  # the handler's own print, from the service process
    for ambiguous in ("key", "no such row"):
        with pytest.raises(ValueError):
            checks.run_row(idempotent_charge, ambiguous)  # several rows, or none
    assert ex.load_progress(progress) == recorded  # run_row records no attempt


def test_checker_survives_broken_answers(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    assert not checks.check_exercise(None).passed
    unsendable = checks.check_exercise(lambda ledger, key, request: None)
    assert not unsendable.passed and "lambda" in unsendable.checks[0].found
    threads = threading.active_count()
    row = checks.run_row(raises_boom, "lost response")
    assert not row.passed and "your handler failed" in row.found
    assert "RuntimeError: boom (in raises_boom" in row.found
    assert row.hint.startswith("The service answered 500 Internal Server Error: RuntimeError: boom")
    assert "RuntimeError: boom" in capsys.readouterr().out  # the service's traceback, printed
    assert threading.active_count() <= threads  # nothing left running in this process


def test_handler_errors_are_reported_only_on_the_rows_they_affected(tmp_path: Path, monkeypatch):
    """The handler raises in the 'same key, different amount' row and returns None in the
    concurrent row: each of those rows names what the service said, with a hint about that
    (not about the race, not about fingerprints); every other row passes and says nothing."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    rows = _rows(checks.check_exercise(fails_on_two_rows))
    raised = rows["same key, different amount"]
    assert not raised.passed
    assert "your handler failed (2 requests): RuntimeError: amount changed" in raised.found
    assert raised.hint.startswith("The service answered 500 Internal Server Error: "
                                  "RuntimeError: amount changed (in fails_on_two_rows, line ")
    assert "Fingerprint the body" not in raised.hint
    none = rows["20 concurrent requests, one key"]
    assert not none.passed and "20x 500" in none.found
    assert "your handler failed (20 requests): TypeError: fails_on_two_rows returned None" \
        in none.found
    assert "race" not in none.hint and "returned None" in none.hint and "409" in none.hint
    others = [c for name, c in rows.items() if name not in (raised.name, none.name)]
    assert len(others) == len(ROW_NAMES) - 2
    assert all(c.passed and "your handler" not in c.found for c in others), others


def test_a_row_that_raises_fails_alone_and_says_how_to_reproduce(tmp_path: Path, monkeypatch):
    """Per-row isolation in the judge: a row whose run raises fails on its own and names its
    input and a line to paste; the rows after it still run and pass. The judge runs here
    (not in its own process) so that a row can be replaced; the crash row is left out to
    keep the test short."""

    def broken(*args, **kwargs):
        raise RuntimeError("row broke")

    rows = tuple((name, case, broken if fn is checks._check_mismatch else fn)
                 for name, case, fn in checks.ROWS if not name.startswith("SIGKILL"))
    monkeypatch.setattr(checks, "ROWS", rows)
    payload = tmp_path / "handler.pkl"
    payload.write_bytes(pickle.dumps(fresh_process.program(idempotent_charge)))
    found = {r["name"]: r for r in checks.judge(payload, seed=2)}
    assert list(found) == [name for name, _, _ in rows]
    bad = found["same key, different amount"]
    assert not bad["passed"] and "RuntimeError: row broke" in bad["found"]
    assert "Input: the same key with 1000 cents more, n=" in bad["hint"]
    assert "(seed 2)" in bad["hint"]
    assert 'Reproduce: checks.run_row(my_answer, "same key, different amount", seed=2)' \
        in bad["hint"]
    assert all(r["passed"] for name, r in found.items() if name != bad["name"]), found


def test_payment_service_cli_help():
    out = subprocess.run([sys.executable, "-m", "labsupport.services.api_communication", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    for option in ("--port", "--port-file", "--handler", "--handler-payload", "--crash-after",
                   "--lease", "--log-level"):
        assert option in out, option
