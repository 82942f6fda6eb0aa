"""Tests for labsupport.model_routing (notebook 04), its checker, explore and bench layers,
and its data set, data/routing/.

Cost and latency are checked against numbers worked out by hand, APGR and CPT against
curves with known answers, the sweep against brute force, the logistic regression
against scikit-learn. No test loads the embedding model: where embeddings are needed, a
deterministic stand-in replaces them.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter

import httpx
import numpy as np
import pytest

from labsupport import model_routing as mr
from labsupport.bench import model_routing as bench
from labsupport.checks import model_routing as checks
from labsupport.explore import model_routing as explore


@pytest.fixture(autouse=True)
def _temporary_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))


def _fake_embed(requests, **_):
    """Deterministic stand-in for the model: a hashed bag of words, unit length."""
    texts = [r if isinstance(r, str) else r.text for r in requests]
    out = np.zeros((len(texts), 64))
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        out[i, 0] += len(text) / 100  # a length feature, so the toy can learn something
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _req(i, label, prompt=10, out=100, split="test", text=None):
    return mr.Request(f"x{i}", text or f"request {i}", label, "support", split, prompt, out)


# --- the data set -------------------------------------------------------------------


def test_data_schema_and_values():
    with mr.REQUESTS_CSV.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["id", "text", "label", "domain", "split",
                                     "prompt_tokens", "output_tokens"]
        rows = list(reader)
    assert len(rows) >= 600
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} == {"simple", "complex"}
    assert {r["split"] for r in rows} == {"train", "test"}
    assert {r["domain"] for r in rows} >= {"support", "coding", "hr", "finance", "writing",
                                          "analysis"}
    for r in rows:
        assert r["text"].strip() == r["text"] and len(r["text"]) >= 10
        assert int(r["prompt_tokens"]) == math.ceil(len(r["text"]) / 4)
        low, high = (20, 200) if r["label"] == "simple" else (400, 1200)
        assert low <= int(r["output_tokens"]) <= high


def test_data_no_request_twice_and_splits_disjoint():
    requests = mr.load_requests()
    normalised = [" ".join(r.text.lower().split()) for r in requests]
    assert len(set(normalised)) == len(normalised), Counter(normalised).most_common(1)
    train = {" ".join(r.text.lower().split()) for r in mr.load_requests("train")}
    test = {" ".join(r.text.lower().split()) for r in mr.load_requests("test")}
    assert not train & test


def test_data_mix_and_split_are_stratified():
    requests = mr.load_requests()
    share_simple = 1 - mr.labels_of(requests).mean()
    assert 0.67 <= share_simple <= 0.73  # the scenario's 70 % simple
    test = mr.load_requests("test")
    assert 0.30 <= len(test) / len(requests) <= 0.40
    for split in ("train", "test"):
        part = mr.load_requests(split)
        assert abs(mr.labels_of(part).mean() - (1 - share_simple)) < 0.03
    for domain in {r.domain for r in requests}:
        labels = Counter(r.label for r in requests if r.domain == domain)
        assert labels["simple"] >= 30 and labels["complex"] >= 15, domain


def test_length_alone_does_not_separate_the_labels():
    requests = mr.load_requests()
    y = mr.labels_of(requests)
    tokens = np.array([r.prompt_tokens for r in requests])
    assert tokens[~y].max() > tokens[y].min()  # long simple and short complex exist
    assert np.mean(tokens[y]) > np.mean(tokens[~y])  # but complex prompts are longer
    out = np.array([r.output_tokens for r in requests])
    assert np.mean(out[y]) > 3 * np.mean(out[~y])


# --- cost and latency arithmetic ------------------------------------------------------


def test_prices_are_list_prices_with_a_date():
    assert (mr.SMALL.input_usd_per_mtok, mr.SMALL.output_usd_per_mtok) == (0.15, 0.60)
    assert (mr.LARGE.input_usd_per_mtok, mr.LARGE.output_usd_per_mtok) == (2.50, 10.00)
    assert mr.SMALL.prices_as_of == mr.LARGE.prices_as_of == mr.PRICES_AS_OF


def test_cost_by_hand():
    # 50 prompt tokens + 150 system = 200 input tokens; 100 output tokens.
    # large: 200 × 2.50 / 1e6 + 100 × 10.00 / 1e6 = 0.0005 + 0.0010 = 0.0015 USD
    # small: 200 × 0.15 / 1e6 + 100 × 0.60 / 1e6 = 0.00003 + 0.00006 = 0.00009 USD
    assert mr.SYSTEM_PROMPT_TOKENS == 150
    assert mr.LARGE.cost_usd(50, 100) == pytest.approx(0.0015)
    assert mr.SMALL.cost_usd(50, 100) == pytest.approx(0.00009)


def test_latency_by_hand():
    assert mr.LARGE.latency_s(101) == pytest.approx(0.60 + 100 * 0.020)  # 2.6 s
    assert mr.SMALL.latency_s(1) == pytest.approx(0.35)  # first token only


def test_evaluate_by_hand():
    requests = [_req(0, "simple", 50, 100), _req(1, "complex", 50, 1001)]
    o = mr.evaluate(requests, ["small", "large"], daily_requests=10_000, failure_rate=1.0)
    small_cost = 0.00009
    large_cost = (200 * 2.50 + 1001 * 10.0) / 1e6  # 0.010510 USD
    assert o.daily_cost_usd == pytest.approx((small_cost + large_cost) / 2 * 10_000)
    latencies = [0.35 + 99 * 0.012, 0.60 + 1000 * 0.020]  # 1.538 s and 20.6 s
    assert o.mean_latency_s == pytest.approx(np.mean(latencies))
    assert o.p95_latency_s == pytest.approx(np.percentile(latencies, 95))
    assert o.quality == 1.0 and o.complex_to_small == 0 and o.share_large == 0.5
    wrong = mr.evaluate(requests, ["large", "small"], failure_rate=1.0)
    assert wrong.quality == 0.5 and wrong.complex_to_small == 1


def test_evaluate_rejects_bad_routes():
    requests = [_req(0, "simple"), _req(1, "complex")]
    with pytest.raises(ValueError, match="small' or 'large"):
        mr.evaluate(requests, ["small", "gpt-5"])
    with pytest.raises(ValueError, match="expected 2 routes"):
        mr.evaluate(requests, ["small"])


def test_small_model_fails_exact_share_of_complex_only():
    requests = mr.load_requests("test")
    y = mr.labels_of(requests)
    for seed in range(3):
        fails = mr.small_model_fails(requests, 0.6, seed)
        assert not (fails & ~y).any()
        assert fails.sum() == round(0.6 * y.sum())
    assert not np.array_equal(mr.small_model_fails(requests, 0.6, 0),
                              mr.small_model_fails(requests, 0.6, 1))


def test_scenario_numbers_scale_to_ten_thousand_requests():
    test = mr.load_requests("test")
    base = mr.evaluate(test, mr.all_large(test))
    prompt = np.array([r.prompt_tokens for r in test]) + 150
    out = np.array([r.output_tokens for r in test])
    per_request = (prompt * 2.5 + out * 10.0) / 1e6
    assert base.daily_cost_usd == pytest.approx(per_request.mean() * 10_000)
    oracle = mr.evaluate(test, mr.oracle_router(test))
    assert oracle.quality == 1.0 and oracle.complex_to_small == 0
    assert oracle.daily_cost_usd < base.daily_cost_usd


def test_cascade_extremes():
    test = mr.load_requests("test")
    never = explore.evaluate_cascade(test, threshold=0.0)  # confidence is never < 0
    assert never.daily_cost_usd == pytest.approx(mr.evaluate(test, mr.all_small(test))
                                                 .daily_cost_usd)
    always = explore.evaluate_cascade(test, threshold=1.01)  # everything escalates
    both = (mr.evaluate(test, mr.all_small(test)).daily_cost_usd
            + mr.evaluate(test, mr.all_large(test)).daily_cost_usd)
    assert always.daily_cost_usd == pytest.approx(both)
    assert always.quality == 1.0 and always.share_large == 1.0


# --- RouteLLM's metrics -------------------------------------------------------------


def test_apgr_and_cpt_on_known_curves():
    x = np.linspace(0, 1, 2001)
    assert explore.apgr(x, x) == pytest.approx(0.5)  # random router
    assert explore.cpt(x, x, 0.5) == pytest.approx(0.5)
    assert explore.apgr(x, np.sqrt(x)) == pytest.approx(2 / 3, abs=1e-3)  # ∫√x = 2/3
    assert explore.cpt(x, np.sqrt(x), 0.5) == pytest.approx(0.25, abs=1e-4)  # √c = ½
    assert explore.apgr(x, x**2) == pytest.approx(1 / 3, abs=1e-3)
    assert explore.cpt(x, x**2, 0.5) == pytest.approx(math.sqrt(0.5), abs=1e-3)
    # A perfect router recovers the whole gap after 20 % of calls: area 1 − 0.2/2 = 0.9.
    assert explore.apgr([0, 0.2, 1], [0, 1, 1]) == pytest.approx(0.9)
    assert explore.cpt([0, 0.2, 1], [0, 1, 1], 0.5) == pytest.approx(0.1)
    assert math.isnan(explore.cpt([0, 1], [0, 0.4], 0.5))
    assert explore.pgr(0.9, 0.8, 1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        explore.apgr([0.1, 1], [0, 1])


def test_sweep_matches_brute_force():
    test = mr.load_requests("test")
    scores = np.round(np.random.default_rng(3).random(len(test)), 2)  # ties on purpose
    curve = explore.sweep(test, scores)
    assert curve.share_large[0] == 0 and curve.share_large[-1] == 1
    for i in range(0, len(curve.alphas), 7):
        o = mr.evaluate(test, mr.threshold_routes(scores, curve.alphas[i]))
        assert o.share_large == pytest.approx(curve.share_large[i])
        assert o.daily_cost_usd == pytest.approx(curve.daily_cost_usd[i])
        assert o.quality == pytest.approx(curve.quality[i])


def test_random_router_apgr_is_one_half():
    test = mr.load_requests("test")
    metrics = [explore.curve_metrics(explore.sweep(test, mr.random_scores(len(test), s)))
               for s in range(20)]
    assert np.mean([m["apgr"] for m in metrics]) == pytest.approx(0.5, abs=0.03)
    assert np.mean([m["cpt50"] for m in metrics]) == pytest.approx(0.5, abs=0.06)
    oracle_scores = mr.labels_of(test).astype(float)
    assert explore.curve_metrics(explore.sweep(test, oracle_scores))["apgr"] > 0.8


# --- the classifier -----------------------------------------------------------------


def test_logistic_regression_matches_scikit_learn():
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) + 0.3 + rng.normal(size=300) > 0)
    ours = mr.LogisticRegression(l2=0.5, tol=1e-10).fit(x, y)
    ref = sklearn_lm.LogisticRegression(C=1 / 0.5, tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(ours.weights, ref.coef_[0], atol=1e-4)
    assert ours.bias == pytest.approx(ref.intercept_[0], abs=1e-4)
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x)[:, 1], atol=1e-5)


def test_classifier_refuses_test_requests(monkeypatch):
    monkeypatch.setattr(mr, "embed_requests", _fake_embed)
    with pytest.raises(ValueError, match="test requests"):
        mr.train_classifier(mr.load_requests())
    with pytest.raises(ValueError, match="labelled"):
        mr.train_classifier(mr.router_view(mr.load_requests("train")))


def test_reference_solution_never_sees_test_data(monkeypatch):
    from labsupport.solutions import model_routing as solution

    seen: set[str] = set()
    real_fit = mr.LogisticRegression.fit
    ids_by_text = {r.text: r.id for r in mr.load_requests()}

    def recording_embed(requests, **kw):
        for r in requests:
            seen.add(ids_by_text[r if isinstance(r, str) else r.text])
        return _fake_embed(requests)

    monkeypatch.setattr(mr, "embed_requests", recording_embed)
    labels_seen: list[int] = []
    monkeypatch.setattr(mr.LogisticRegression, "fit", lambda self, x, y, start=None:
                        labels_seen.append(len(y)) or real_fit(self, x, y, start))
    router, alpha = solution.build_router()
    train_ids = {r.id for r in mr.load_requests("train")}
    assert seen and seen <= train_ids  # only training texts were embedded while training
    assert max(labels_seen) == len(train_ids)
    assert 0 < alpha < 1
    # The classifier records what it was trained on: the train split, nothing else.
    classifier = mr.train_classifier(mr.load_requests("train"))
    assert classifier.trained_on == frozenset(train_ids)


# --- the live backend, the gateway ----------------------------------------------------


def test_backend_from_env(monkeypatch):
    monkeypatch.delenv("LABSUPPORT_LARGE_MODEL_URL", raising=False)
    assert mr.backend_from_env("large") is mr.LARGE
    monkeypatch.setenv("LABSUPPORT_SMALL_MODEL_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("LABSUPPORT_SMALL_MODEL_NAME", "llama-3.2-1b")
    small = mr.backend_from_env("small")
    assert small.url == "http://127.0.0.1:9/v1" and small.model == "llama-3.2-1b"
    assert small.input_usd_per_mtok == mr.SMALL.input_usd_per_mtok
    with pytest.raises(ValueError):
        mr.backend_from_env("medium")


def test_complete_over_an_openai_compatible_api():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer k"
        return httpx.Response(200, json={
            "choices": [{"message": {"role": "assistant", "content": "Settings > Reset."}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500}})

    backend = mr.Backend("live", 2.5, 10.0, "2024-10-02", 0.5, 0.02,
                         url="http://test/v1", model="m", api_key="k")
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        result = mr.complete(backend, _req(0, None), client=client)
    assert result.text == "Settings > Reset." and not result.simulated
    assert result.cost_usd == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1e6)
    simulated = mr.complete(mr.SMALL, _req(1, None, 50, 100))
    assert simulated.simulated and simulated.cost_usd == pytest.approx(0.00009)


def test_gateway_falls_back_and_logs_each_decision():
    def flaky(backend, request):
        if backend.name == "gpt-4o":
            raise ConnectionError("503 from upstream")
        return mr.complete(backend, request)

    gateway = mr.RoutingGateway(mr.all_large, {"small": mr.SMALL, "large": mr.LARGE}, flaky)
    result = gateway.handle(_req(0, None))
    assert result.backend == "gpt-4o-mini"
    entry = gateway.decisions[-1]
    assert entry["routed_to"] == "large" and entry["served_by"] == "small"
    assert entry["fallback"] and "503" in entry["errors"][0]

    def down(backend, request):
        raise TimeoutError("no answer")

    gateway = mr.RoutingGateway(mr.all_small, {"small": mr.SMALL, "large": mr.LARGE}, down)
    with pytest.raises(RuntimeError, match="all backends failed"):
        gateway.handle(_req(1, None))
    assert gateway.decisions[-1]["served_by"] is None


# --- the exercise checker -----------------------------------------------------------


def _lookup_router():
    """A perfect router for the tests: looks the label up by text (no embeddings)."""
    labels = {r.text: r.label for r in mr.load_requests()}
    return lambda requests: ["large" if labels[r.text] == "complex" else "small"
                             for r in requests]


def test_starter_fails_with_numbers():
    result = checks.check_exercise({"router": mr.all_large, "report": {}})
    assert not result.passed
    cost = next(c for c in result.checks if c.name.startswith("daily cost close"))
    assert not cost.passed and "% of the oracle" in cost.found and "$" in cost.found


def test_good_router_with_report_passes():
    router = _lookup_router()
    test = mr.load_requests("test")
    report = checks.reference_report(router(test), test)
    assert checks.check_exercise({"router": router, "report": report}).passed
    wrong = dict(report, saving_usd=report["saving_usd"] * 1.5)
    result = checks.check_exercise({"router": router, "report": wrong})
    assert not result.passed and "saving_usd" in result.checks[-1].found


def test_router_sees_no_labels_and_errors_become_feedback():
    result = checks.check_exercise({"router": mr.oracle_router, "report": {}})
    assert not result.passed and "is_complex" in result.checks[0].found  # no label to read
    assert not checks.check_exercise(None).passed
    assert not checks.check_exercise({"router": 42, "report": {}}).passed
    bad_length = checks.check_exercise({"router": lambda rs: ["small"], "report": {}})
    assert not bad_length.passed and "expected 264 routes" in bad_length.checks[0].found


def test_rules_router_alone_is_not_enough():
    result = checks.check_exercise({"router": mr.rules_router, "report": {}})
    complex_check = next(c for c in result.checks if c.name == "complex requests sent to small")
    assert not complex_check.passed


def test_solution_mode_raises_on_failure():
    from labsupport import exercises as ex

    with pytest.raises(ex.ExerciseFailed):
        checks.check_exercise({"router": mr.all_large, "report": {}}, solution_mode=True)


def test_failed_rows_name_the_input_and_a_reproduce_line_that_runs():
    result = checks.check_exercise({"router": mr.rules_router, "report": {}})
    row = next(c for c in result.checks if c.name == "complex requests sent to small")
    assert "as a router sees it" in row.hint and 'checks.outcome(my_answer["router"])' in row.hint
    my_answer = {"router": mr.rules_router}
    reproduced = eval(row.hint.split("Reproduce: ")[1],  # the line a learner pastes
                      {"checks": checks, "mr": mr, "my_answer": my_answer})
    assert reproduced.complex_to_small == 5 and reproduced.n_complex == 80
    boom = checks.check_exercise({"router": lambda rs: 1 / 0, "report": {}})
    assert boom.checks[0].name == "your code runs" and "ZeroDivisionError" in boom.checks[0].found
    assert "checks.route_test_split(" in boom.checks[0].hint


def test_a_report_that_raises_fails_only_its_row():
    class Hostile(dict):
        def get(self, key, default=None):
            raise RuntimeError("no")

    router = _lookup_router()
    result = checks.check_exercise({"router": router, "report": Hostile()})
    assert [c.passed for c in result.checks] == [True, True, True, False]
    assert "RuntimeError" in result.checks[-1].found


def test_explore_callback_moves_the_marker_and_summarises():
    test = mr.load_requests("test")
    lab = explore.build_lab(test, mr.labels_of(test).astype(float) * 0.8 + 0.1)
    fig = explore.build_figure(lab, 0.5)
    text = explore.update_figure(fig, lab, 0.5)  # the oracle's scores: α = 0.5 is the oracle
    oracle = lab.points["oracle"]
    assert fig.data[-1].x[0] == pytest.approx(oracle.daily_cost_usd)
    assert "0/80 complex requests sent to small" in text and "30% to large" in text


def test_bench_cli_prints_the_reference_routers(capsys):
    assert bench.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[:10].strip() for line in lines] == ["all large", "all small", "oracle", "rules"]
    assert all("/day" in line and "complex→small" in line for line in lines)
    table = bench.scenario_table()
    assert table["oracle"].quality == 1.0 and table["all large"].share_large == 1.0
    with pytest.raises(SystemExit):
        bench.main(["--help"])



# --- v2: what the router sees ------------------------------------------------------------------


def test_router_input_carries_only_request_time_fields():
    view = mr.router_view(mr.load_requests("test"))
    assert {f for f in mr.RouterRequest.__slots__} == {"text", "prompt_tokens", "domain"}
    assert not hasattr(view[0], "__dict__")  # slots: nothing can be attached
    with pytest.raises(AttributeError):
        view[0].output_tokens  # noqa: B018 - the answer's length does not exist at request time
    seen = []
    checks.route_test_split(lambda batch: seen.extend(batch) or ["large"] * len(batch))
    assert seen and all(type(r) is mr.RouterRequest for r in seen)


def test_no_field_the_router_sees_predicts_the_label_better_than_the_text():
    train, test = mr.load_requests("train"), mr.load_requests("test")
    y_train, y_test = mr.labels_of(train), mr.labels_of(test)
    text_accuracy = np.mean((mr.train_classifier(train).predict_proba(test) >= 0.5) == y_test)
    # domain: the best a per-domain majority vote can do
    by_domain = {d: np.mean([y for r, y in zip(train, y_train, strict=True) if r.domain == d]) >= 0.5
                 for d in {r.domain for r in train}}
    domain_accuracy = np.mean([by_domain[r.domain] == y for r, y in zip(test, y_test, strict=True)])
    # prompt tokens: the best threshold on the training split
    tokens = np.array([r.prompt_tokens for r in train])
    best = max(range(1, 200), key=lambda t: np.mean((tokens > t) == y_train))
    token_accuracy = np.mean((np.array([r.prompt_tokens for r in test]) > best) == y_test)
    assert domain_accuracy < text_accuracy and token_accuracy < text_accuracy, (
        domain_accuracy, token_accuracy, text_accuracy)
