"""Benchmark of the load-balancing simulator of ``02_load_balancing.ipynb`` (``make bench``).

:func:`benchmark` times :func:`labsupport.load_balancing.simulate` per policy and checks it
request by request against the same model written with SimPy (:func:`simulate_simpy`).
From the shell: ``python -m labsupport.bench.load_balancing --requests 100000``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np

from labsupport import load_balancing as lb


def simulate_simpy(cluster: lb.Cluster, policy: lb.Policy, n_requests: int, *,
                   seed: int = 0) -> np.ndarray:
    """The same model written with SimPy (one process per request); returns latencies.

    It replays the same arrivals and sizes and asks the same policy function, keeping the
    in-flight counts in the View from SimPy's own events; so with a policy that reads
    only ``active`` both simulators must produce the same latency for every request.
    """
    import simpy

    arrivals, sizes, _ = lb._draw(cluster, n_requests, seed)
    arrivals_l, sizes_l = arrivals.tolist(), sizes.tolist()
    speeds = cluster.speed_list()
    env = simpy.Environment()
    servers = [simpy.Resource(env, capacity=cluster.workers) for _ in range(cluster.n_servers)]
    view = lb.View(cluster.n_servers, cluster.weight_list(), random.Random(seed))
    latency = np.full(n_requests, np.nan)

    def request(k: int, srv: int):  # a SimPy process: queue, get a worker, work, leave
        with servers[srv].request() as slot:
            yield slot
            yield env.timeout(sizes_l[k] / speeds[srv])
        view.active[srv] -= 1
        view.completed[srv] += 1
        latency[k] = env.now - arrivals_l[k]

    def source():
        for k in range(n_requests):
            yield env.timeout(arrivals_l[k] - env.now)
            view.now = env.now
            srv = policy(view)
            view.active[srv] += 1
            env.process(request(k, srv))

    env.process(source())
    env.run()
    return latency


def benchmark(n_requests: int = 100_000, seed: int = 1) -> dict[str, Any]:
    """Seconds to simulate ``n_requests`` per policy, and the SimPy cross-check.

    The model: 10 single-worker servers, exponential sizes, 90% utilization.
    """
    cluster = lb.Cluster(n_servers=10, arrival_rate=9.0, service=lb.Exponential(1.0))
    seconds: dict[str, float] = {}
    for name, policy in lb.POLICIES.items():
        t0 = time.perf_counter()
        lb.simulate(cluster, policy, n_requests, seed=seed)
        seconds[name] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    ours = lb.simulate(cluster, lb.least_connections, n_requests, seed=seed).latency
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = simulate_simpy(cluster, lb.least_connections, n_requests, seed=seed)
    simpy_s = time.perf_counter() - t0
    return {
        "requests": n_requests,
        "seconds per policy": seconds,
        "all policies within 1 s": max(seconds.values()) <= 1.0,
        "simpy check (least-connections)": {
            "mean latency, this simulator (s)": round(float(ours.mean()), 4),
            "mean latency, SimPy (s)": round(float(np.nanmean(theirs)), 4),
            "largest per-request difference (s)": float(np.nanmax(np.abs(ours - theirs))),
            "agree": bool(np.allclose(ours, theirs, rtol=0, atol=1e-6)),
            "this simulator (s)": round(ours_s, 3),
            "SimPy (s)": round(simpy_s, 3),
            "speed ratio (SimPy / this)": round(simpy_s / ours_s, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m labsupport.bench.load_balancing``: print :func:`benchmark` as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport.bench.load_balancing",
        description="Benchmark the load-balancer simulator: seconds to simulate N requests "
                    "per policy (10 single-worker servers, 90% utilization), and the "
                    "cross-check against SimPy. Prints JSON.")
    parser.add_argument("--requests", type=int, default=100_000, metavar="N",
                        help="requests per policy (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    print(json.dumps(benchmark(args.requests, seed=args.seed), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
