"""Tests of labsupport.capstone (notebook 08) and its layers, against independent references:
notebook 01's ledger counts, 04's routers, 05's answer-key chunker, 06's capacity formula,
arithmetic done by hand, and the live system's own HTTP answers."""

from __future__ import annotations

import math
import time

import httpx
import numpy as np
import pytest

from labsupport import ai_observability as obs
from labsupport import api_communication as api
from labsupport import capstone as cap
from labsupport import model_routing as mr
from labsupport import rag_pipeline as rag
from labsupport import servers
from labsupport.checks import capstone as checks
from labsupport.checks import capstone_gameday as gd
from labsupport.explore import capstone as explore
from labsupport.solutions import capstone as key

# --- the settings ------------------------------------------------------------------------


def test_shipped_settings_are_valid_and_have_the_four_latent_weaknesses():
    cap.SHIPPED.validate()
    assert (cap.SHIPPED.idempotency_keys, cap.SHIPPED.balancer, cap.SHIPPED.ingest,
            cap.SHIPPED.replicas) == (False, "round-robin", "direct", 3)
    assert cap.SHIPPED.visibility_timeout_s == 30.0  # SQS's default visibility timeout


@pytest.mark.parametrize("changes, message", [
    ({"more_servers": 2}, "no setting named 'more_servers'"),
    ({"replicas": 7}, "GPU quota"),
    ({"replicas": 4.0}, "expected int"),
    ({"idempotency_keys": 1}, "expected bool"),  # strict: 1 is not True
    ({"balancer": "fastest"}, "choose one of"),
    ({"batch_slots": 64}, "KV-cache"),
    ({"tenant_scoped_paths": ("ask", "admin")}, "not a read path"),
    ({"max_receive_count": 0}, "max_receive_count"),
])
def test_bad_changes_are_refused_with_a_message_naming_them(changes, message):
    with pytest.raises(ValueError, match=message):
        cap.SHIPPED.with_changes(changes)


def test_a_list_of_paths_is_taken_as_a_tuple_and_changes_leave_the_original_alone():
    s = cap.SHIPPED.with_changes({"tenant_scoped_paths": ["ask"], "visibility_timeout_s": 1})
    assert s.tenant_scoped_paths == ("ask",) and cap.SHIPPED.tenant_scoped_paths == cap.READ_PATHS


# --- 01: billing once ---------------------------------------------------------------------


@pytest.mark.parametrize("keys, charges", [(False, 2), (True, 1)])
def test_a_retry_with_the_same_key_is_billed_once_only_with_keys(tmp_path, keys, charges):
    ledger = api.Ledger(tmp_path / "billing.db")
    settings = cap.SHIPPED.with_changes({"idempotency_keys": keys})
    request = api.ChargeRequest("northwind-q1", 2)
    first = cap.bill_answer(ledger, "k1", request, settings)
    retry = cap.bill_answer(ledger, "k1", request, settings)
    assert len(ledger.charges("northwind-q1")) == charges
    if keys:
        assert retry == first  # the stored reply, replayed
        other = cap.bill_answer(ledger, "k1", api.ChargeRequest("northwind-q1", 5), settings)
        assert other.status == 422  # same key, another payload


def test_lost_response_evidence_counts_one_extra_charge_per_lost_response():
    env = {"questions": 30, "lose_every": 4, "seed": 0}
    lost = len(range(0, 30, 4))  # questions 0, 4, ..., 28
    broken = gd.lost_response(cap.SHIPPED, env)
    assert broken["charges"] == 30 + lost and broken["questions billed twice"] == lost
    fixed = gd.lost_response(cap.SHIPPED.with_changes({"idempotency_keys": True}), env)
    assert fixed["charges"] == 30 and fixed["questions unanswered"] == 0
    no_retry = gd.lost_response(cap.SHIPPED.with_changes({"client_retries": 0}), env)
    assert no_retry["questions unanswered"] == lost and no_retry["charges"] == 30


# --- 02, 03, 04, 05, 06: each setting is the module's mechanism ---------------------------


def test_route_is_notebook_04s_routers():
    test = mr.router_view(mr.load_requests("test"))
    for router, expected in (("rules", mr.rules_router(test, max_simple_tokens=50)),
                             ("all_large", mr.all_large(test)), ("all_small", mr.all_small(test))):
        settings = cap.SHIPPED.with_changes({"router": router, "max_simple_tokens": 50})
        assert cap.route(settings, test) == expected


def test_sections_chunker_is_notebook_05s_answer_key_and_fixed_is_fixed_chars():
    from labsupport.solutions import rag_pipeline as rag_key

    doc = rag.load_handbook()[0]
    assert cap.chunk_spans(cap.SHIPPED, doc.text) == rag_key.my_chunker(doc.text)
    fixed = cap.SHIPPED.with_changes({"chunker": "fixed_chars", "chunk_size": 700})
    assert cap.chunk_spans(fixed, doc.text) == rag.fixed_chars(doc.text, 700)


@pytest.mark.parametrize("uploads, workers, capacity, expected", [
    (500, 20, 20, (20, 480)), (500, 500, 20, (20, 480)), (500, 5, 20, (5, 495)), (10, 20, 20, (10, 0))])
def test_direct_ingestion_accepts_what_the_threads_and_the_processor_take_at_once(
        uploads, workers, capacity, expected):
    assert cap.direct_ingest(uploads, workers, capacity) == expected


def test_balancer_ejects_one_of_three_hosts_only_when_asked():
    assert cap.balancer(cap.SHIPPED).outlier_detection is None
    od = cap.balancer(cap.SHIPPED.with_changes({"outlier_ejection": True})).outlier_detection
    assert od.always_eject_one_host and int(3 * od.max_ejection_percent / 100) == 0


def test_queueing_utilisation_is_offered_load_over_capacity_computed_by_hand():
    env = {"load": 1.3, "seed": 0}
    per_replica = obs.capacity_estimate(obs.EngineConfig())  # requests/s of one 8-slot replica
    for replicas in (3, 5):
        ev = gd.batch_queueing(cap.SHIPPED.with_changes({"replicas": replicas}), env)
        assert ev["utilisation"] == pytest.approx(1.3 * 3 * per_replica / (replicas * per_replica))
    assert gd.batch_queueing(cap.SHIPPED, env)["utilisation"] == pytest.approx(1.3)


def test_a_chunk_ends_mid_sentence_only_inside_a_sentence():
    text = "First sentence. Second one here.\nA list line\nLast words"
    assert not gd._ends_mid_sentence(text, len("First sentence."))
    assert gd._ends_mid_sentence(text, len("First sen"))
    assert not gd._ends_mid_sentence(text, text.index("\nA list"))  # the line goes on below
    assert not gd._ends_mid_sentence(text, len(text))


# --- 07: the two read paths ---------------------------------------------------------------


def test_tenant_paths_leak_only_where_the_filter_is_missing():
    shipped = gd.tenant_isolation(cap.SHIPPED, {"seed": 0})
    assert shipped["cross-tenant results (ask)"] == shipped["cross-tenant results (related)"] == 0
    assert shipped["queries with fewer than top_k results"] == 0
    broken = gd.tenant_isolation(cap.SHIPPED.with_changes({"tenant_scoped_paths": ("ask",)}),
                                 {"seed": 0})
    assert broken["cross-tenant results (related)"] > 0 and broken["cross-tenant results (ask)"] == 0
    post = gd.tenant_isolation(cap.SHIPPED.with_changes({"tenant_scoped_paths": ("ask",),
                                                         "related_post_filter": True}), {"seed": 0})
    assert post["cross-tenant results (related)"] == 0
    assert post["queries with fewer than top_k results"] > 0


# --- the checks -----------------------------------------------------------------------------


def test_every_fault_has_an_incident_a_page_evidence_and_invariants():
    assert sorted(checks.INCIDENT_ORDER) == sorted(cap.FAULTS)
    assert list(checks.INCIDENT_ORDER) != list(cap.FAULTS)  # not the notebooks' order
    for fault in cap.FAULTS:
        assert fault not in gd.PAGES[fault].lower()  # the page is a symptom, not the name
        assert gd.INVARIANTS[fault] and fault in gd.EVIDENCE


def test_each_incident_breaks_its_invariants_and_the_answer_key_restores_them():
    for n, fault in enumerate(checks.INCIDENT_ORDER, start=1):
        broken, fixed = checks.measure(n), checks.measure(n, key.FIXES[fault])
        assert not all(inv.holds(broken) for inv in gd.INVARIANTS[fault]), fault
        assert all(inv.holds(fixed) for inv in gd.INVARIANTS[fault]), fault


@pytest.mark.parametrize("answer", ["lost response", None, {"fault": 3, "fix": "x"},
                                    {"fault": "lost response", "fix": {"replicas": "five"}},
                                    {"fault": "lost response"}])
def test_a_malformed_answer_is_feedback_not_a_traceback(answer, tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    result = checks.check_step(2, answer)
    assert not result.passed and result.checks


def test_step_numbers_outside_the_game_day_are_refused():
    with pytest.raises(ValueError, match="1 to 7"):
        checks.check_step(8, {})


def test_the_answer_keys_rows_are_the_same_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))
    rows = [[(c.name, c.passed, c.found) for c in checks.check_exercise(key.hardened_settings()).checks]
            for _ in range(2)]
    assert rows[0] == rows[1] and all(passed for _, passed, _ in rows[0])


# --- explore: the dashboard's arithmetic ----------------------------------------------------


def _scrape(counts_by_replica: list[list[float]], tokens: float, queue: float) -> dict:
    le = [0.1, 1.0, math.inf]
    return {explore.TTFT: {"le": [b for _ in counts_by_replica for b in le],
                           "cumulative": [c for counts in counts_by_replica for c in counts]},
            explore.TOKENS: tokens, explore.QUEUE: queue, explore.INGESTED: 0.0}


def test_dashboard_sums_replicas_buckets_and_takes_the_quantile_of_the_increase():
    a = _scrape([[1, 2, 2], [0, 0, 0]], tokens=100.0, queue=0.0)
    b = _scrape([[3, 6, 6], [0, 4, 4]], tokens=400.0, queue=7.0)
    le, delta = explore._ttft_increase(a, b)
    assert le == [0.1, 1.0, math.inf] and delta == [2.0, 8.0, 8.0]
    dash = explore.LiveDashboard()
    dash.update(a, 0.5)
    dash.update(b, 1.0)
    assert dash.series["p99"] == [pytest.approx(obs.histogram_quantile(0.99, le, delta))]
    assert dash.series["tokens"] == [pytest.approx(600.0)] and dash.series["queue"] == [7.0]
    assert list(dash.widget.data[2].y) == [pytest.approx(600.0)]


def test_noon_widget_callback_redraws_and_says_whether_the_budget_holds():
    fig = explore.tier_figure()
    line = explore.tier_update(fig, "least-connections", True, 3, 3.0)
    assert len(fig.data[0].y) == 3 and "budget" in line
    assert max(fig.data[0].y) > gd.P99_BUDGET_S  # the slow replica's own p99 stays high


# --- the live system --------------------------------------------------------------------------


def _ask(client: httpx.Client, url: str, key_: str, tenant: str = "northwind") -> list[str]:
    with client.stream("POST", f"{url}/v1/ask", headers={"Idempotency-Key": key_},
                       json={"tenant": tenant, "question": "How do I reset my password?"}) as r:
        assert r.status_code == 200, r.read()
        return [line for line in r.iter_lines() if line.startswith("data: ")]


def test_live_system_answers_bills_ingests_scopes_and_stops():
    from labsupport.services import capstone as services

    settings = cap.SHIPPED.with_changes({"idempotency_keys": True})
    system = services.start_system(settings)
    try:
        again = services.start_system(settings)  # a re-run cell replaces it
        assert [s.name for s in servers.running_servers()].count("capstone-gateway") == 1
        system = again
        with httpx.Client(timeout=30.0) as client:
            lines = _ask(client, system.url, "k1")
            meta = lines[0]
            assert '"sources"' in meta and lines[-1] == "data: [DONE]" and len(lines) > 3
            _ask(client, system.url, "k1")  # the retry: streamed again, billed once
            assert len(system.ledger.charges()) == 1
            assert client.post(f"{system.url}/v1/ask", json={"tenant": "globex", "question": "x"}
                               ).status_code == 404
            assert client.post(f"{system.url}/v1/uploads", json={"tenant": "northwind"}
                               ).status_code == 422
            doc = system.stores.documents["bluefin"][0]
            upload = {**doc.__dict__, "id": "upload-test-001"}
            assert client.post(f"{system.url}/v1/uploads", json=upload).status_code == 202
            deadline = time.time() + 20
            while system.stores.stores["bluefin"].get(["upload-test-001#0"]) == [] \
                    and time.time() < deadline:
                time.sleep(0.1)
            assert system.stores.stores["bluefin"].get(["upload-test-001#0"]), "not ingested"
            own = system.stores.documents["northwind"][0]
            related = client.get(f"{system.url}/v1/related",
                                 params={"tenant": "northwind", "doc_id": own.id})
            assert related.status_code == 200, related.text
            hits = related.json()
            assert len(hits) == cap.SHIPPED.top_k and own.id not in {h["id"] for h in hits}
            assert {h["tenant"] for h in hits} == {"northwind"}
            assert client.get(f"{system.url}/v1/related", params={"tenant": "northwind",
                                                                  "doc_id": doc.id}).status_code == 404
            metrics = client.get(f"{system.url}/metrics").text
            assert "assistant_time_to_first_token_seconds_bucket" in metrics
        urls = [system.url] + [r.url for r in system.replicas]
    finally:
        assert services.stop_system() == 1
    for url in urls:
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/health", timeout=2.0)


def test_mixed_load_streams_answers_to_both_clients_with_no_foreign_source():
    from labsupport.services import capstone as services

    system = services.start_system()
    try:
        scrapes = []
        load = services.run_mixed_load(system, questions=16, rate_per_s=16.0, uploads=6,
                                       on_scrape=lambda parsed, t: scrapes.append(parsed))
    finally:
        services.stop_system()
    assert load.answers == 16 and not load.errors and load.uploads_accepted == 6
    assert load.sources_from_other_client == 0
    assert len(scrapes) >= 2 and scrapes[-1][explore.TOKENS] == load.tokens
    assert np.all(np.diff([s[explore.TOKENS] for s in scrapes]) >= 0)  # a counter
