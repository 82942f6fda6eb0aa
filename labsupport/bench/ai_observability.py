"""Benchmark of notebook 06 (``notebooks/06_ai_observability.ipynb``): the HTTP replay.

The notebook's incident is replayed over real HTTP on a paced simulated clock; the
design promises that such a run equals the offline :func:`simulate` on the same
workload. :func:`benchmark` measures how far that holds on this machine: wall time,
requests that reached the server after their scheduled time, and the largest token-time
difference against the offline run. ``python -m labsupport.bench.ai_observability``
prints it.
"""

from __future__ import annotations

import time
from typing import Any

from labsupport import ai_observability as obs
from labsupport.services import ai_observability as services


def benchmark(seed: int = services.INCIDENT_SEED,
              speed: float = services.INCIDENT_SPEED) -> dict[str, Any]:
    """Replay the incident over HTTP at ``speed`` and compare it with the offline run."""
    workload = services.incident_workload(seed)
    started = time.perf_counter()
    offline = obs.simulate(workload, services.INCIDENT_CONFIG)
    offline_s = time.perf_counter() - started
    server = services.start_server(services.INCIDENT_CONFIG, speed=speed)
    try:
        run = services.run_load(server.url, workload)
    finally:
        services.stop_server()
    deviation = max((abs(a - b) for got, want in zip(run.records, offline.records, strict=True)
                     for a, b in zip(got.token_times_s, want.token_times_s, strict=True)),
                    default=0.0)  # simulated seconds
    return {"requests": len(workload), "speed": speed,
            "offline_simulation_s": round(offline_s, 3),
            "http_replay_wall_s": round(run.wall_s, 2),
            "late_requests": run.late_requests,
            "max_token_time_difference_s": round(deviation, 6),
            "http_equals_offline": run.late_requests == 0 and deviation <= 1e-6}


if __name__ == "__main__":
    for name, value in benchmark().items():
        print(f"{name}: {value}")
