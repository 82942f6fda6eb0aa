"""Tests of labsupport.load_balancing (and its checks, explore and bench layers) against
independent references.

Queueing theory (M/M/1, Erlang C, Mitzenmacher's supermarket model), a brute-force FCFS
replay, SimPy, and the exercise checker's verdicts. Fixed seeds throughout; the whole
file runs in well under a minute on two cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from labsupport import load_balancing as lb
from labsupport.bench import load_balancing as bench
from labsupport.checks import load_balancing as checks
from labsupport.explore import load_balancing as explore
from labsupport.solutions import load_balancing as solution

TOLERANCE = 0.05  # the bar: simulation within 5% of theory


def within(found: float, expected: float, tol: float = TOLERANCE) -> bool:
    return abs(found / expected - 1) <= tol


# --- the formulas themselves, against independent references ------------------------


def mmc_by_balance_equations(lam: float, mu: float, c: int, states: int = 3000) -> float:
    """M/M/c mean time in system from the birth-death chain solved numerically (Little)."""
    rates = [min(k, c) * mu for k in range(1, states)]
    p = np.ones(states)
    for k in range(1, states):
        p[k] = p[k - 1] * lam / rates[k - 1]
    p /= p.sum()
    return float((np.arange(states) * p).sum() / lam)


@pytest.mark.parametrize("lam,c", [(0.9, 1), (9.0, 10), (3.5, 4), (0.5, 2)])
def test_erlang_c_matches_the_birth_death_chain(lam: float, c: int) -> None:
    assert checks.mmc_mean_time(lam, 1.0, c) == pytest.approx(mmc_by_balance_equations(lam, 1.0, c),
                                                          rel=1e-9)


def test_theory_numbers_quoted_in_the_notebook() -> None:
    assert checks.mm1_mean_time(0.9, 1.0) == pytest.approx(10.0)
    assert checks.mm1_mean_time(0.9 * 3, 3.0) == pytest.approx(10 / 3)  # W = 10/mu at rho 0.9
    assert checks.mmc_mean_time(9.0, 1.0, 10) == pytest.approx(1.669, abs=5e-4)
    assert checks.supermarket_mean_time(0.9, 1) == pytest.approx(10.0)
    assert checks.supermarket_mean_time(0.99, 1) == pytest.approx(100.0)
    assert checks.supermarket_mean_time(0.9, 2) == pytest.approx(2.614, abs=5e-4)
    assert checks.supermarket_mean_time(0.99, 2) == pytest.approx(5.432, abs=5e-4)
    # d = 2 from the fixed point of the mean-field ODE: s_i = lam^(2^i - 1), T = sum s_i / lam.
    tails = [0.9 ** (2 ** i - 1) for i in range(1, 40)]
    assert checks.supermarket_mean_time(0.9, 2) == pytest.approx(sum(tails) / 0.9, rel=1e-12)


# --- the simulator against queueing theory ---------------------------------------------


def test_mm1_at_rho_09() -> None:
    cluster = lb.Cluster(n_servers=1, arrival_rate=0.9)  # mu = 1: W = 10
    result = lb.simulate(cluster, lb.round_robin, 1_500_000, seed=3, warmup=20_000)
    assert within(result.mean(), checks.mm1_mean_time(0.9, 1.0)), result.mean()


def test_mmc_erlang_c_and_the_case_for_pooling() -> None:
    pooled = lb.Cluster(n_servers=1, workers=10, arrival_rate=9.0)  # one queue, ten workers
    w_pooled = lb.simulate(pooled, lb.round_robin, 600_000, seed=4, warmup=20_000).mean()
    assert within(w_pooled, 1.669), w_pooled
    separate = lb.Cluster(n_servers=10, arrival_rate=9.0)  # ten queues, random split
    w_separate = checks.long_run_mean_latency(separate, lb.random_choice, 5_000_000, seed=4,
                                          warmup=100_000)
    assert within(w_separate, 10.0), w_separate
    assert w_separate / w_pooled > 5


def test_supermarket_d1_at_09_with_the_event_simulator() -> None:
    cluster = lb.Cluster(n_servers=10, arrival_rate=9.0)  # lam = 0.9 per server
    result = lb.simulate(cluster, lb.random_choice, 1_500_000, seed=5, warmup=50_000)
    assert within(result.mean(), checks.supermarket_mean_time(0.9, 1)), result.mean()


def test_supermarket_d1_at_099() -> None:
    # At 99% a single queue relaxes over ~4*10^4 time units and its mean is 100: it takes
    # ~10^8 requests to pin it to a few percent, hence the vectorized path.
    cluster = lb.Cluster(n_servers=1, arrival_rate=0.99)
    mean = checks.long_run_mean_latency(cluster, lb.random_choice, 100_000_000, seed=1,
                                    warmup=1_000_000)
    assert within(mean, checks.supermarket_mean_time(0.99, 1)), mean


@pytest.mark.parametrize("lam,n_requests,warmup", [(0.9, 400_000, 50_000),
                                                   (0.99, 3_000_000, 300_000)])
def test_supermarket_d2(lam: float, n_requests: int, warmup: int) -> None:
    # 1000 servers: the formula is the n -> infinity limit (at n = 100 and lam = 0.99 the
    # simulation sits about 10% above it).
    cluster = lb.Cluster(n_servers=1000, arrival_rate=lam * 1000)
    result = lb.simulate(cluster, lb.power_of_two, n_requests, seed=0, warmup=warmup)
    assert within(result.mean(), checks.supermarket_mean_time(lam, 2)), result.mean()


# --- the simulator against brute force and SimPy -----------------------------------------


def brute_force_latencies(result: lb.Result, cluster: lb.Cluster,
                          sizes: np.ndarray) -> np.ndarray:
    """Replay the dispatch decisions with explicit worker slots, one request at a time."""
    speeds = cluster.speed_list()
    slots = [[0.0] * cluster.workers for _ in range(cluster.n_servers)]
    out = np.empty(result.arrival.size)
    for k, (t, s) in enumerate(zip(result.arrival, result.server, strict=True)):
        w = min(range(cluster.workers), key=lambda j: slots[s][j])  # first free slot
        start = max(t, slots[s][w])
        slots[s][w] = start + sizes[k] / speeds[s]
        out[k] = slots[s][w] - t
    return out


@pytest.mark.parametrize("policy", [lb.least_connections, lb.power_of_two, lb.round_robin])
def test_fcfs_with_workers_matches_brute_force(policy: lb.Policy) -> None:
    cluster = lb.Cluster(n_servers=3, workers=2, arrival_rate=4.0, speeds=(1.0, 0.5, 2.0))
    result = lb.simulate(cluster, policy, 3000, seed=7)
    _, sizes, _ = lb._draw(cluster, 3000, 7)
    np.testing.assert_allclose(result.latency, brute_force_latencies(result, cluster, sizes),
                               rtol=0, atol=1e-9)
    assert result.percentile(99) == pytest.approx(np.percentile(result.latency, 99))


def test_vectorized_path_gives_the_event_simulators_latencies() -> None:
    cluster = lb.Cluster(n_servers=4, arrival_rate=3.2, speeds=(1.0, 1.0, 0.8, 1.2))
    event = lb.simulate(cluster, lb.round_robin, 20_000, seed=9)
    mean = checks.long_run_mean_latency(cluster, lb.round_robin, 20_000, seed=9)
    assert mean == pytest.approx(event.mean(), rel=1e-12)


def test_simpy_model_agrees_request_by_request() -> None:
    cluster = lb.Cluster(n_servers=5, workers=2, arrival_rate=8.0)
    ours = lb.simulate(cluster, lb.least_connections, 5000, seed=2).latency
    theirs = bench.simulate_simpy(cluster, lb.least_connections, 5000, seed=2)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


# --- policies --------------------------------------------------------------------------


def test_weighted_round_robin_follows_the_weights() -> None:
    cluster = lb.Cluster(n_servers=3, arrival_rate=1.0, weights=(3.0, 1.0, 1.0))
    result = lb.simulate(cluster, lb.weighted_round_robin, 500, seed=0)
    assert result.share().tolist() == [0.6, 0.2, 0.2]
    window = result.server[:5].tolist()  # smooth: the heavy server is not hit 3 times in a row
    assert sorted(window) == [0, 0, 0, 1, 2] and window[:3] != [0, 0, 0]


def test_least_connections_picks_the_fewest_in_flight() -> None:
    import random

    view = lb.View(4, [1.0] * 4, random.Random(0))
    view.active[:] = [3, 1, 2, 1]
    assert {lb.least_connections(view) for _ in range(50)} == {1, 3}  # ties split at random
    view.candidates = [0, 2]  # 1 and 3 ejected
    assert lb.least_connections(view) == 2


def test_least_connections_beats_round_robin_with_a_slow_server() -> None:
    rr = checks.noon_report(lb.round_robin, checks.NOON, seed=1, n_requests=10_000)
    lc = checks.noon_report(lb.least_connections, checks.NOON, seed=1, n_requests=10_000)
    assert rr.slow_server_share == pytest.approx(0.1, abs=0.001)
    assert lc.slow_server_share < 0.04 and lc.p99_slow_fleet < rr.p99_slow_fleet / 10


def test_scenario_leaves_the_healthy_servers_room() -> None:
    for scenario in (checks.NOON, checks.UNSEEN):
        assert scenario.healthy_only_utilization() < 0.70


# --- outlier detection -------------------------------------------------------------------


def test_latency_outlier_is_ejected_for_growing_times() -> None:
    od = lb.OutlierDetection(interval=2.0, latency_factor=3.0, base_ejection_time=10.0)
    cluster = checks.NOON.cluster(slow=True)
    result = lb.simulate(cluster, lb.Balancer(lb.least_connections, od), 60_000, seed=1)
    ejections = [(s, a, u) for s, a, u in result.ejections]
    assert ejections and all(s == checks.NOON.slow_server for s, _, _ in ejections)
    lengths = [u - a for _, a, u in ejections[:-1]]  # the last one may be cut by the end
    assert len(lengths) >= 2 and lengths[1] > lengths[0]  # base x number of ejections
    assert lengths[0] == pytest.approx(10.0, abs=od.interval)
    assert lengths[1] == pytest.approx(20.0, abs=od.interval)


def test_at_most_max_ejection_percent_and_consecutive_errors() -> None:
    # Three servers always answer 5xx; 10% of 10 hosts means one ejected at a time.
    cluster = lb.Cluster(n_servers=10, arrival_rate=5.0, error_rates=(1, 1, 1) + (0,) * 7)
    od = lb.OutlierDetection()  # Envoy defaults: consecutive_5xx 5, interval 10 s, 30 s, 10%
    result = lb.simulate(cluster, lb.Balancer(lb.round_robin, od), 3000, seed=0)
    assert result.ejections[0][0] in (0, 1, 2)
    for t in np.linspace(0, float(result.arrival[-1]), 200):
        assert sum(a <= t < u for _, a, u in result.ejections) <= 1
    assert result.dropped == 0


def test_panic_threshold_routes_to_every_host() -> None:
    cluster = lb.Cluster(n_servers=4, arrival_rate=5.0, error_rates=(1.0,) * 4)
    od = lb.OutlierDetection(max_ejection_percent=100)  # would eject everyone
    result = lb.simulate(cluster, lb.Balancer(lb.round_robin, od), 2000, seed=0)
    assert len({s for s, _, _ in result.ejections}) >= 3  # ejections happen ...
    assert result.dropped == 0 and set(result.server.tolist()) == {0, 1, 2, 3}  # ... panic


# --- the exercise checker -------------------------------------------------------------------


def test_starter_fails_and_solution_passes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    starter = checks.check_exercise(lb.round_robin)
    assert not starter.passed and any("%" in c.found for c in starter.checks)
    assert not checks.check_exercise(lb.least_connections).passed  # not enough on its own
    assert checks.check_exercise(solution.answer, solution_mode=True).passed


def test_checker_turns_bad_answers_into_feedback(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    assert not checks.check_exercise(None).passed
    crashed = checks.check_exercise(lambda view: 1 / 0)
    assert "ZeroDivisionError" in crashed.checks[0].found
    dropping = checks.check_exercise(lambda view: 99)  # no such server: every request dropped
    assert not dropping.passed
    dropped = next(c for c in dropping.checks if c.name == "no request dropped")
    assert not dropped.passed and "dropped" in dropped.found


def test_explore_callback_updates_the_figure() -> None:
    fig = explore.explore_figure()
    summary = explore.update_explore(fig, traffic=3.0, policy="least-connections", n_servers=6)
    assert "least-connections" in summary and "slow server s3" in summary
    assert len(fig.data[1].y) == 6 and not math.isnan(fig.data[2].y[3])
    healthy = explore.update_explore(fig, slowdown=1, n_servers=6)
    assert "no slow server" in healthy and "slow server s" not in healthy
    assert list(fig.data[1].x) == [f"s{i}" for i in range(6)]  # no server marked slow


def test_measure_tables_give_each_server_a_column() -> None:
    rows = [{"policy": "round-robin", "p99 all (s)": 1.0, "p99 slow server's users (s)": 2.0,
             "p99 healthy fleet (s)": 0.5, "slower than 5x median (%)": 10.0,
             "share per server (%)": [25.0, 25.0, 25.0, 25.0]}]
    shares = explore.share_table(rows, slow=3)
    assert shares.columns == ["policy", "s0", "s1", "s2", "s3 (slow)"]
    assert shares.column("s3 (slow)") == [25.0] and "25.0" in repr(shares)
    assert "share per server (%)" not in explore.policy_table(rows).columns
    theory = explore.theory_table([{"model": "M/M/1", "theory": 10.0, "simulated": 10.6,
                                    "requests": 1000, "seconds": 0.1}])
    assert theory.column("within 5%") == ["OFF"] and "+6.0" in repr(theory)


def test_a_case_that_raises_fails_only_its_rows(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))

    def fails_on_eight_servers(view: lb.View) -> int:  # only the unseen variant has 8
        if view.n_servers == 8:
            raise RuntimeError("eight servers")
        return lb.least_connections(view)

    result = checks.check_exercise(fails_on_eight_servers)
    rows = {c.name: c for c in result.checks}
    unseen = [c for name, c in rows.items() if name.startswith(checks.UNSEEN.name)]
    noon = [c for name, c in rows.items() if name.startswith(checks.NOON.name)]
    assert len(unseen) == 3 and all("RuntimeError" in c.found for c in unseen)
    assert "checks.noon_report(my_answer, checks.UNSEEN, seed=11)" in unseen[0].hint
    assert len(noon) == 3 and not any("RuntimeError" in c.found for c in noon)
    assert "%" in noon[1].found  # judged on its numbers: least-connections is not enough
    assert "3 runs raised" in rows["no request dropped"].found


# --- v2: the cap as in Envoy 1.28+, the latency estimates, the fixed reference --------------


@pytest.mark.parametrize("hosts, default, one_host", [(8, 0, 1), (10, 1, 1), (20, 2, 2)])
def test_ejection_cap_rounds_down_unless_always_eject_one_host(hosts, default, one_host) -> None:
    # Envoy (outlier_detection_impl.cc): eject only if 100 * (ejected + 1) / hosts <= 10
    envoy = max(k for k in range(hosts + 1) if k == 0 or 100 * k / hosts <= 10)
    assert envoy == default
    cluster = lb.Cluster(n_servers=hosts, arrival_rate=20.0, error_rates=(1.0,) * 3 + (0.0,) * (hosts - 3))
    for always, expected in ((False, default), (True, one_host)):
        od = lb.OutlierDetection(always_eject_one_host=always)
        result = lb.simulate(cluster, lb.Balancer(lb.round_robin, od), 4000, seed=0)
        most = max(sum(a <= t < u for _, a, u in result.ejections)
                   for t in np.linspace(0, float(result.arrival[-1]), 400))
        assert most == expected


def test_ewma_and_peak_ewma_against_their_closed_forms() -> None:
    # EWMA after n equal observations x from x0: x + (x0 - x)(1 - alpha)^n
    value = 0.05
    for _ in range(7):
        value = lb.ewma_update(value, 0.8, 0.1)
    assert value == pytest.approx(0.8 + (0.05 - 0.8) * 0.9 ** 7)
    assert lb.ewma_update(None, 0.3, 0.1) == 0.3
    assert lb.peak_ewma_update(0.05, 0.8, 0.01, 10.0) == 0.8  # jumps up at once
    # decays: after elapsed = tau, the old value keeps weight 1/e
    assert lb.peak_ewma_update(0.8, 0.05, 10.0, 10.0) == pytest.approx(0.05 + 0.75 / math.e)


def test_latency_outliers_use_medians_and_skip_thin_windows() -> None:
    fast = [[0.03] * 40 for _ in range(5)]
    slow = [*fast, [0.2] * 40]  # six times the fleet's median
    assert lb.latency_outliers(slow, 3.0, 20) == [5]
    heavy = [list(w) for w in fast]
    heavy[1] = [0.03] * 37 + [5.0] * 3  # mean 0.40 s, median 0.03 s
    assert lb.latency_outliers(heavy, 3.0, 20) == []
    thin = [*fast, [1.0] * 5]
    assert lb.latency_outliers(thin, 3.0, 20) == []


def test_everything_to_one_server_fails_against_the_fixed_reference(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    rows = {c.name: c for c in checks.check_exercise(lambda view: 0).checks}
    share = rows[f"{checks.NOON.name}: every healthy server takes its part"]
    assert not share.passed and "0.00× to" in share.found
    p99 = rows[f"{checks.NOON.name}: overall p99"]
    assert not p99.passed and "reference" in p99.found
