"""Tests of notebook 06's modules (labsupport.ai_observability and its checks, explore and
services layers) against hand-computed traces, numpy and theory."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest

from labsupport import ai_observability as obs
from labsupport.checks import ai_observability as checks
from labsupport.explore import ai_observability as explore
from labsupport.services import ai_observability as services


@pytest.fixture(autouse=True)
def _progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))


# --- metric definitions on a hand-computed trace ------------------------------------


def test_request_metrics_on_a_hand_trace():
    rec = obs.RequestRecord(0, start_s=1.0, prompt_tokens=5, token_times_s=(1.5, 1.6, 1.8, 2.1))
    assert obs.ttft(rec) == pytest.approx(0.5)
    assert obs.e2e_latency(rec) == pytest.approx(1.1)
    assert obs.tpot(rec) == pytest.approx((1.1 - 0.5) / 3)
    assert obs.inter_token_latencies(rec) == pytest.approx([0.1, 0.2, 0.3])
    one = obs.RequestRecord(1, 0.0, 5, (0.4,))
    assert math.isnan(obs.tpot(one)) and obs.inter_token_latencies(one) == []


def test_summary_pools_itl_and_computes_throughput():
    recs = [obs.RequestRecord(0, 0.0, 5, (1.0, 2.0, 3.0)),
            obs.RequestRecord(1, 1.0, 5, (1.5, 1.75))]
    s = obs.summarize(recs)
    assert s["tokens_per_s"] == pytest.approx(5 / 3.0)  # 5 tokens from t=0 to t=3
    # ITL pooled over all tokens: [1, 1, 0.25]; median 1.0
    assert s["itl_p50_s"] == pytest.approx(1.0)
    assert s["ttft_p50_s"] == pytest.approx(np.percentile([1.0, 0.5], 50))
    assert obs.goodput(recs, ttft_slo_s=0.6, tpot_slo_s=0.5) == pytest.approx(1 / 3.0)


# --- the engine -------------------------------------------------------------------


def test_engine_one_slot_by_hand():
    cfg = obs.EngineConfig(slots=1, step_overhead_s=0.01, decode_s_per_seq=0.0,
                           prefill_s_per_token=0.001)
    work = [obs.Request(0, 0.0, 10, 2), obs.Request(1, 0.0, 20, 1)]
    sim = obs.simulate(work, cfg)
    # A: prefill 10 tokens (0.01) + overhead -> first token 0.02, second 0.03.
    # B waits for the slot, then 0.01 + 0.02 -> its only token at 0.06.
    assert sim.records[0].token_times_s == pytest.approx((0.02, 0.03))
    assert sim.records[1].token_times_s == pytest.approx((0.06,))
    assert sim.admitted_s.tolist() == pytest.approx([0.0, 0.03])
    assert sim.peak_waiting == 1


def test_decode_time_grows_with_batch():
    cfg = obs.EngineConfig(slots=2, step_overhead_s=0.0, decode_s_per_seq=0.01,
                           prefill_s_per_token=0.0)
    sim = obs.simulate([obs.Request(0, 0.0, 1, 3), obs.Request(1, 0.0, 1, 3)], cfg)
    assert obs.inter_token_latencies(sim.records[0]) == pytest.approx([0.02, 0.02])
    alone = obs.simulate([obs.Request(0, 0.0, 1, 3)], cfg)
    assert obs.inter_token_latencies(alone.records[0]) == pytest.approx([0.01, 0.01])


def test_batch_never_exceeds_slots_and_is_fifo():
    cfg = obs.EngineConfig(slots=3)
    work = obs.make_workload(8.0, 10.0, seed=3)
    sim = obs.simulate(work, cfg)
    events = sorted([(a, 1) for a in sim.admitted_s]
                    + [(t[-1], -1) for t in sim.server_token_times], key=lambda e: (e[0], e[1]))
    running = np.cumsum([d for _, d in events])
    assert running.max() <= 3
    order = np.argsort(sim.server_arrival_s, kind="stable")
    assert np.all(np.diff(sim.admitted_s[order]) >= 0)  # first come, first served


def test_workload_statistics():
    work = obs.make_workload(5.0, 200.0, seed=1, prompt_mean=400, output_mean=40)
    n = len(work)
    assert abs(n - 1000) < 4 * math.sqrt(1000)  # Poisson count
    assert np.mean([r.prompt_tokens for r in work]) == pytest.approx(400, rel=0.1)
    assert np.mean([r.output_tokens for r in work]) == pytest.approx(40, rel=0.1)


# --- histogram_quantile -------------------------------------------------------------


def test_prometheus_documentation_example():
    ex = explore.prometheus_docs_example()
    assert ex["spike_220ms_histogram_p95_s"] == pytest.approx(0.295)
    assert ex["spike_220ms_true_p95_s"] == pytest.approx(0.220)
    assert ex["spike_320ms_histogram_p95_s"] == pytest.approx(0.4425)


def test_histogram_quantile_special_cases():
    bounds = [0.1, 0.2, math.inf]
    # +Inf bucket rule: everything above the top bound reads as the top finite bound.
    assert obs.histogram_quantile(0.99, bounds, [0, 0, 10]) == 0.2
    assert obs.histogram_quantile(0.5, bounds, [0, 0, 10]) == 0.2
    # The lowest bucket interpolates from 0 when its bound is positive...
    assert obs.histogram_quantile(0.5, bounds, [10, 10, 10]) == pytest.approx(0.05)
    # ...and returns its bound when that bound is <= 0.
    assert obs.histogram_quantile(0.5, [-1.0, 0.0, math.inf], [10, 10, 10]) == -1.0
    assert obs.histogram_quantile(-0.1, bounds, [1, 2, 3]) == -math.inf
    assert obs.histogram_quantile(1.1, bounds, [1, 2, 3]) == math.inf
    assert math.isnan(obs.histogram_quantile(0.5, [0.1, 0.2], [1, 2]))  # no +Inf bucket
    assert math.isnan(obs.histogram_quantile(0.5, bounds, [0, 0, 0]))   # no observations
    assert math.isnan(obs.histogram_quantile(0.5, [math.inf], [3]))    # one bucket
    # Prometheus (promql/quantile.go, bucketQuantile): NaN q is NaN; q = 0 over an empty
    # lowest bucket interpolates 0/0, NaN (no special case for rank 0), and never raises
    assert math.isnan(obs.histogram_quantile(math.nan, bounds, [1, 2, 3]))
    assert math.isnan(obs.histogram_quantile(0.0, [0.1, 0.5, math.inf], [0, 3, 3]))
    assert obs.histogram_quantile(1.0, [0.1, 0.5, 1.0, math.inf], [2, 5, 9, 9]) == 1.0


def test_histogram_quantile_against_numpy_on_fine_buckets():
    rng = np.random.default_rng(0)
    samples = rng.exponential(0.3, 20000)
    bounds = list(np.arange(0.01, 3.0, 0.01)) + [math.inf]
    counts = obs.bucketize(samples, bounds)
    for q in (0.5, 0.9, 0.99):
        assert obs.histogram_quantile(q, bounds, counts) == pytest.approx(
            np.quantile(samples, q), abs=0.01)  # error bounded by one bucket width


def test_averaging_p99s_is_wrong():
    ex = explore.averaging_p99_example()
    assert ex["mean_of_p99s_s"] == pytest.approx(0.505)
    assert ex["pooled_p99_s"] == pytest.approx(1.0)


# --- Little's law -------------------------------------------------------------------


@pytest.mark.parametrize("rate,slots", [(2.0, 8), (6.0, 8), (3.0, 2)])
def test_littles_law_on_simulated_runs(rate, slots):
    sim = obs.simulate(obs.make_workload(rate, 30.0, seed=5), obs.EngineConfig(slots=slots))
    law = obs.littles_law(sim.records)
    # Independent L: count requests in flight on a fine grid and average over time.
    t0 = min(r.start_s for r in sim.records)
    t1 = max(r.token_times_s[-1] for r in sim.records)
    grid = np.linspace(t0, t1, 20001)
    starts = np.array([r.start_s for r in sim.records])
    ends = np.array([r.token_times_s[-1] for r in sim.records])
    in_flight = ((starts[None, :] <= grid[:, None]) & (grid[:, None] < ends[None, :])).sum(1)
    assert in_flight.mean() == pytest.approx(law["lambda_times_w"], rel=0.01)
    assert law["mean_in_flight"] == pytest.approx(law["lambda_times_w"], rel=1e-9)
    # The same from scraped gauges (waiting + running), sampled once a second.
    scrapes = services.scrapes_from_simulation(sim, 0.25)
    samples = [(s["t_s"], s[obs.WAITING_METRIC] + s[obs.RUNNING_METRIC]) for s in scrapes]
    sampled = obs.littles_law(sim.records, samples)["mean_in_flight"]
    assert sampled == pytest.approx(law["lambda_times_w"], rel=0.05)


def test_overload_grows_the_queue_not_the_throughput():
    cfg = obs.EngineConfig()
    cap = obs.capacity_estimate(cfg)
    low = obs.summarize(obs.simulate(obs.make_workload(0.5 * cap, 40, 2), cfg).records)
    work = obs.make_workload(1.3 * cap, 40, 2)
    high_sim = obs.simulate(work, cfg)
    high = obs.summarize(high_sim.records)
    assert high["ttft_p99_s"] > 10 * low["ttft_p99_s"]
    assert high_sim.peak_waiting > 20
    # Tokens/s saturates near capacity instead of following the offered load.
    offered = 1.3 * cap * np.mean([r.output_tokens for r in work])  # tokens/s asked for
    assert high["tokens_per_s"] < 0.85 * offered
    assert high["tokens_per_s"] == pytest.approx(cap * np.mean([r.output_tokens for r in work]),
                                                 rel=0.15)


def test_synthetic_scrapes_match_brute_force():
    sim = obs.simulate(obs.make_workload(6.0, 20.0, 4), obs.EngineConfig())
    scrapes = services.scrapes_from_simulation(sim, 1.0)
    last = scrapes[-1]
    assert last[obs.TTFT_METRIC]["count"] == len(sim.records)
    assert last[obs.TOKENS_METRIC] == sum(r.output_tokens for r in sim.records)
    t = 10.0
    snap = next(s for s in scrapes if s["t_s"] == t)
    waiting = sum(1 for a, m in zip(sim.server_arrival_s, sim.admitted_s, strict=True)
                  if a <= t < m)
    assert snap[obs.WAITING_METRIC] == waiting


# --- the server over real HTTP ------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    handle = services.start_server(obs.EngineConfig(slots=4), speed=50.0)
    yield handle
    services.stop_server()


def test_server_streams_tokens_over_http(server):
    body = {"prompt": "what is the leave policy", "max_tokens": 6}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    import json
    tokens = [json.loads(e) for e in events[:-1]]
    assert [t["index"] for t in tokens] == list(range(6))
    times = [t["t_s"] for t in tokens]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


def test_bad_requests_get_422(server):
    for body in ({"prompt": "", "max_tokens": 3}, {"prompt": "hi", "max_tokens": 0},
                 {"prompt_tokens": -5}, {"max_tokens": "many"}):
        assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 422


def test_metrics_endpoint_uses_otel_names_and_buckets(server):
    text = httpx.get(f"{server.url}/metrics").text
    parsed = services.parse_metrics(text)
    # Boundaries as given by the OpenTelemetry GenAI semantic conventions.
    assert parsed[obs.TTFT_METRIC]["le"] == [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                             0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf]
    assert parsed[obs.TPOT_METRIC]["le"] == [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                                             0.4, 0.5, 0.75, 1.0, 2.5, math.inf]
    assert parsed[obs.DURATION_METRIC]["le"] == [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64,
                                                 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                                                 math.inf]
    assert 'gen_ai_operation_name="text_completion"' in text
    for name in (obs.WAITING_METRIC, obs.RUNNING_METRIC, obs.TOKENS_METRIC):
        assert name in parsed


def test_http_run_equals_offline_simulation(server):
    work = obs.make_workload(8.0, 4.0, seed=9)
    for _attempt in range(3):  # a busy machine can send requests late: then run it again
        run = services.run_load(server.url, work, scrape_every_s=0.5)
        if run.late_requests == 0:
            break
    sim = obs.simulate(work, server.config)
    assert run.late_requests == 0, "three runs in a row sent requests late: machine too busy"
    for got, want in zip(run.records, sim.records, strict=True):
        assert got.token_times_s == pytest.approx(want.token_times_s, abs=1e-6)
    # The scraped histogram saw every request; the counter every token.
    last = run.scrapes[-1]
    assert last[obs.TTFT_METRIC]["count"] >= len(work)  # earlier tests add a few
    assert last[obs.TOKENS_METRIC] >= sum(r.output_tokens for r in work)
    assert all(0 <= s["cpu_percent"] for s in run.scrapes)


def test_starting_again_stops_the_previous_server():
    first = services.start_server(speed=50.0)
    second = services.start_server(speed=50.0)
    assert not first._thread.is_alive()
    assert httpx.get(f"{second.url}/health").json() == {"status": "ok"}
    services.stop_server()
    assert not second._thread.is_alive()


# --- the dashboard and the exercise -------------------------------------------------


def test_dashboard_series_and_callback():
    sim = obs.simulate(obs.make_workload(6.5, 40.0, 1), obs.EngineConfig())
    series = explore.dashboard_series(services.scrapes_from_simulation(sim, 1.0))
    # Overload: TTFT p99 from the buckets is capped at 10 s by the +Inf bucket rule,
    # while the exact p99 is above it.
    assert np.nanmax(series["ttft_p99_s"]) == 10.0
    assert obs.summarize(sim.records)["ttft_p99_s"] > 10.0
    fig = explore.dashboard_figure(series)
    text = explore.explore(fig, offered_load=3.0, slots=8)
    assert "3.0 req/s" in text and len(fig.data) == 6


def test_solution_passes_and_starter_fails():
    from labsupport.solutions import ai_observability as key

    assert checks.check_exercise(key.diagnose).passed

    def starter(records, scrapes):
        latency = np.mean([r.token_times_s[-1] - r.start_s for r in records])
        return {"mean_latency_s": latency,
                "cpu_percent": np.mean([s["cpu_percent"] for s in scrapes])}

    result = checks.check_exercise(starter)
    assert not result.passed
    assert any("missing" in c.found for c in result.checks)

    def always_queueing(records, scrapes):
        answer = key.diagnose(records, scrapes)
        return {**answer, "cause": "queueing for batch slots", "metric": obs.WAITING_METRIC}

    failed = [c.name for c in checks.check_exercise(always_queueing).checks if not c.passed]
    assert failed == [f"diagnosis of an unseen incident ({kind})"
                      for kind in ("slow decode", "long prompts")]
    assert not checks.check_exercise(None).passed
    assert not checks.check_exercise(lambda r, s: 1 / 0).passed


def test_one_incident_that_raises_fails_only_its_own_row():
    import statistics

    from labsupport.solutions import ai_observability as key

    def breaks_on_long_prompts(records, scrapes):
        if np.median([r.prompt_tokens for r in records]) > 2000:
            statistics.mean([])  # raises StatisticsError
        return key.diagnose(records, scrapes)

    result = checks.check_exercise(breaks_on_long_prompts)
    failed = [c for c in result.checks if not c.passed]
    assert [c.name for c in failed] == ["diagnosis of an unseen incident (long prompts)"]
    assert failed[0].found.startswith("StatisticsError")
    assert "long prompts, seed 13" in failed[0].hint
    # The reproduce line, pasted into a cell, raises the same error.
    reproduce = failed[0].hint.split("Reproduce: ", 1)[1]
    with pytest.raises(statistics.StatisticsError):
        exec(reproduce, {"checks": checks, "my_answer": breaks_on_long_prompts})


def test_course_servers_keep_idle_connections_longer_than_httpx_reuses_them():
    """Else a busy machine races them: the server closes a pooled connection as the client
    reuses it (httpx.ReadError)."""
    import httpx

    from labsupport import servers
    assert servers.DEFAULT_OPTIONS["timeout_keep_alive"] > httpx.Limits().keepalive_expiry
