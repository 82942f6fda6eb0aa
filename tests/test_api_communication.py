"""Tests for notebook 01's modules: labsupport.api_communication and its layers.

The backoff formulas are checked against the AWS blog's definitions and against sample
statistics; the contention simulation against a closed form (no jitter, no spread: one
winner per round) and for the blog's ordering; the payment service over real HTTP on
127.0.0.1, for every status code the IETF idempotency-key draft names.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from labsupport import api_communication as api
from labsupport import exercises as ex
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


# --- ledger -----------------------------------------------------------------------------------


def test_claim_is_atomic_under_threads(tmp_path: Path):
    ledger = api.Ledger(tmp_path / "l.sqlite")
    barrier = threading.Barrier(20)

    def claim(_: int) -> bool:
        barrier.wait()
        return ledger.claim_key("k-1", "fp")

    with ThreadPoolExecutor(20) as pool:
        wins = list(pool.map(claim, range(20)))
    assert wins.count(True) == 1
    rec = ledger.get_key("k-1")
    assert rec is not None and rec.in_flight and rec.reply is None


def test_keys_expire_after_ttl(tmp_path: Path):
    now = [1000.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", key_ttl=api.STRIPE_KEY_TTL, clock=lambda: now[0])
    assert ledger.claim_key("k", "a")
    ledger.save_response("k", "a", api.Reply(201, {"charge_id": "ch_1"}))
    now[0] += api.STRIPE_KEY_TTL - 1
    assert ledger.get_key("k").reply == api.Reply(201, {"charge_id": "ch_1"})
    assert not ledger.claim_key("k", "a")
    now[0] += 2  # 24 h and 1 s after the first use
    assert ledger.get_key("k") is None
    assert ledger.claim_key("k", "b")  # a fresh claim: the old record is gone
    assert ledger.get_key("k").fingerprint == "b"


def test_ledger_survives_reopen_and_release(tmp_path: Path):
    path = tmp_path / "l.sqlite"
    a = api.Ledger(path)
    a.charge(api.ChargeRequest("o-1", 100), key="k")
    a.claim_key("k2", "fp")
    a.release_key("k2")
    b = api.Ledger(path)  # a new process would do exactly this
    assert b.count_charges("o-1") == 1 and b.get_key("k2") is None


def test_fingerprint_depends_on_payload_only():
    a = api.ChargeRequest("o-1", 1500, "eur")
    assert api.fingerprint(a) == api.fingerprint(api.ChargeRequest("o-1", 1500, "eur"))
    assert api.fingerprint(a) != api.fingerprint(api.ChargeRequest("o-1", 2500, "eur"))
    assert len(api.fingerprint(a)) == 64


def test_parse_idempotency_key():
    assert services.parse_idempotency_key('"abc"') == "abc"  # structured-field string
    assert services.parse_idempotency_key("abc") == "abc"
    assert services.parse_idempotency_key(None) is None
    assert services.parse_idempotency_key('""') is None


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


def test_first_request_201_and_retry_replays(payments):
    service, _, client = payments
    first = _charge(client, "k-1")
    again = _charge(client, "k-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert service.ledger.count_charges("o-1") == 1


def test_same_key_other_payload_422(payments):
    service, _, client = payments
    assert _charge(client, "k-2", amount=1500).status_code == 201
    assert _charge(client, "k-2", amount=2500).status_code == 422
    assert service.ledger.count_charges("o-1") == 1


def test_missing_key_400_and_bad_body_400(payments):
    service, _, client = payments
    assert _charge(client, None).status_code == 400
    assert client.post("/charges", content=b"{not json", headers={"Idempotency-Key": "x"}).status_code == 400
    assert client.post("/charges", json={"order_id": "o", "amount_cents": -5},
                       headers={"Idempotency-Key": "x"}).status_code == 400
    assert _charge(client, "k" * 300).status_code == 400
    assert service.ledger.count_charges() == 0


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
            while ledger.get_key("k-3") is None and time.monotonic() < deadline:
                time.sleep(0.01)  # wait until the first request has claimed the key
            second = _charge(client, "k-3")
            assert second.status_code == 409
            assert first.result().status_code == 201
        assert ledger.count_charges() == 1
    finally:
        server.stop()


def test_twenty_concurrent_requests_one_charge(payments):
    service, server, _ = payments
    barrier = threading.Barrier(20)

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            barrier.wait()
            return _charge(c, "k-4", order="o-4").status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(20)))
    assert service.ledger.count_charges("o-4") == 1
    assert set(codes) <= {201, 409} and 201 in codes


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
            assert ledger.count_charges("o-9") == expected >= 1
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
    assert api.Ledger(path).count_charges("o-r") == 1


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


def test_checker_passes_reference_and_fails_starter(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    good = checks.check_exercise(idempotent_charge, solution_mode=True)
    assert good.passed
    bad = checks.check_exercise(api.naive_charge)
    assert not bad.passed
    failed = {c.name for c in bad.checks if not c.passed}
    assert {"lost response, then 2 retries", "20 concurrent requests, one key",
            "same key, different amount", "no Idempotency-Key header",
            "service restart between attempts"} <= failed
    assert any("charge(s) for key k-" in c.found for c in bad.checks)
    assert not any(h.name == "exercise-check" for h in services.running_servers())


def test_checker_survives_broken_answers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    assert not checks.check_exercise(None).passed

    def raises(ledger, key, request):
        raise RuntimeError("boom")

    result = checks.check_exercise(raises)
    assert not result.passed and "RuntimeError: boom" in result.checks[0].found
    assert not any(h.name == "exercise-check" for h in services.running_servers())
    assert threading.active_count() < 10  # no server threads left behind


def _rows(result) -> dict:
    return {c.name: c for c in result.checks}


def test_handler_error_is_reported_only_on_the_row_it_affected(tmp_path: Path, monkeypatch):
    """The handler fails once, in the 'same key, different amount' row: that row names the
    exception and its line; the rows after it pass and say nothing about it."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))

    def fails_on_the_other_amount(ledger, key, request):
        if request.amount_cents == 2500 and len(request.order_id) == len("order-1234"):
            raise RuntimeError("amount changed")
        return idempotent_charge(ledger, key, request)

    rows = _rows(checks.check_exercise(fails_on_the_other_amount))
    for name in ("no Idempotency-Key header", "two different keys",
                 "service restart between attempts", "lost response, then 2 retries"):
        assert rows[name].passed, rows[name]
        assert "your handler" not in rows[name].found, rows[name].found
    bad = rows["same key, different amount"]
    assert not bad.passed
    assert "your handler raised: RuntimeError: amount changed" in bad.found
    assert "Compare the stored fingerprint" not in bad.hint
    assert "RuntimeError: amount changed" in bad.hint and "fails_on_the_other_amount" in bad.hint


def test_handler_returning_none_in_flight_gets_a_hint_about_that_not_the_race(tmp_path: Path,
                                                                              monkeypatch):
    """Returning record.reply while the first request is in flight returns None: a 500
    from the service (a TypeError). The hint must say so, not talk about the race."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))

    def none_for_the_concurrent_row(ledger, key, request):
        if len(request.order_id) == len("order-123") and request.order_id[6:].isdigit():
            return None  # what `return record.reply` gives while the key is in flight
        return idempotent_charge(ledger, key, request)

    rows = _rows(checks.check_exercise(none_for_the_concurrent_row))
    row = rows["20 concurrent requests, one key"]
    assert not row.passed and "20x 500" in row.found
    assert "race" not in row.hint
    assert row.hint.startswith("TypeError: your handler returned None")
    assert "record.reply None" in row.hint and "409" in row.hint
    assert "your handler failed (20 requests): TypeError" in row.found
    assert all(c.passed and "your handler" not in c.found
               for name, c in rows.items() if name != row.name), rows


def test_a_row_that_raises_fails_alone_and_says_how_to_reproduce(tmp_path: Path, monkeypatch):
    """Per-row isolation: a row whose run raises fails on its own, names its input and a
    line to paste; the other rows still run and pass."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))

    def broken(*args, **kwargs):
        raise RuntimeError("row broke")

    monkeypatch.setattr(checks, "_check_mismatch", broken)
    rows = _rows(checks.check_exercise(idempotent_charge))
    assert list(rows) == list(checks.ROWS)
    bad = rows["same key, different amount"]
    assert not bad.passed and "RuntimeError: row broke" in bad.found
    assert "Input: key k-" in bad.hint and "(seed 1)" in bad.hint
    assert 'Reproduce: checks.run_row(my_answer, "same key, different amount")' in bad.hint
    assert all(c.passed for name, c in rows.items() if name != bad.name), rows
    with pytest.raises(RuntimeError, match="row broke"):  # run_row shows the traceback
        checks.run_row(idempotent_charge, "different amount")
    assert not any(h.name == "exercise-check" for h in services.running_servers())


def test_run_row_gives_the_full_checks_verdict(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    row = checks.run_row(api.naive_charge, "no Idempotency-Key")
    assert row.name == "no Idempotency-Key header" and not row.passed
    assert row.found.startswith("201 ch_") and row.found.endswith("; 1 charge(s)")
    assert checks.run_row(idempotent_charge, "restart").passed
    with pytest.raises(ValueError):
        checks.run_row(idempotent_charge, "key")  # names several rows
    assert ex.load_progress(tmp_path / "progress.json") == {}  # run_row records no attempt
    assert not any(h.name == "exercise-check" for h in services.running_servers())


def test_payment_service_cli_help():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "labsupport.services.api_communication", "--help"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "--port" in out and "--handler" in out


# --- leases and the card network's idempotency (crash recovery) -------------------------


def test_a_claim_whose_lease_ran_out_is_taken_over_once(tmp_path):
    now = [1000.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", lease=2.0, clock=lambda: now[0])
    assert ledger.claim_key("k", "fp")
    now[0] += 1.9
    assert not ledger.claim_key("k", "fp")  # still leased: the first request may be running
    assert not ledger.claim_key("k", "other")  # another payload never takes it over
    now[0] += 0.2
    assert ledger.claim_key("k", "fp")  # lease over: this retry takes the claim
    assert not ledger.claim_key("k", "fp")  # and holds it for a new lease
    ledger.save_response("k", "fp", api.Reply(201, {"charge_id": "ch_1"}))
    now[0] += 10
    assert not ledger.claim_key("k", "fp")  # done keys are replayed, never taken over


def test_concurrent_takeovers_have_one_winner(tmp_path):
    now = [0.0]
    ledger = api.Ledger(tmp_path / "l.sqlite", lease=1.0, clock=lambda: now[0])
    assert ledger.claim_key("k", "fp")
    now[0] = 5.0
    with ThreadPoolExecutor(max_workers=20) as pool:
        wins = list(pool.map(lambda _: ledger.claim_key("k", "fp"), range(20)))
    assert sum(wins) == 1


def test_the_card_network_charges_once_per_processor_key(tmp_path):
    ledger = api.Ledger(tmp_path / "l.sqlite")
    request = api.ChargeRequest("o-9", 1200)
    first = ledger.charge(request, key="k", processor_key="k")
    again = ledger.charge(request, key="k", processor_key="k")  # a takeover asks again
    assert again == first and ledger.count_charges("o-9") == 1
    assert ledger.find_charge("k") == first and ledger.find_charge("nope") is None
    ledger.charge(request)
    ledger.charge(request)  # without a processor key every call charges: the double charge
    assert ledger.count_charges("o-9") == 3
