"""Figures and widget callbacks of ``01_api_communication.ipynb``.

The Explore panel: how jitter breaks up a thundering herd, drawn from
:func:`simulate_contention`, the blog's test (simulated time, so the curves do not depend
on how busy the machine is).
"""

from __future__ import annotations

import heapq
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from labsupport import plots
from labsupport.api_communication import STRATEGIES, STRATEGY_NAMES, Strategy, backoff_delay


@dataclass(frozen=True)
class ContentionResult:
    """One run of the contention simulation."""

    strategy: Strategy
    clients: int
    calls: int  # attempts made by all clients together, first tries included
    finish_times: np.ndarray  # ms, when each client's write succeeded, sorted

    @property
    def completion_ms(self) -> float:  # until the last client succeeded
        return float(self.finish_times[-1]) if len(self.finish_times) else 0.0


def simulate_contention(clients: int, strategy: Strategy, *, base_ms: float = 10.0,
                        cap_ms: float = 1_000.0, call_ms: float = 10.0, call_spread: float = 0.5,
                        seed: int = 0) -> ContentionResult:
    """N clients each write once to one resource under optimistic concurrency; losers back off.

    The blog's model: all clients start at t = 0; an attempt reads at ``t`` and commits at
    ``t + call_ms``, and wins only if nobody committed after its read (compare-and-swap). A
    loser sleeps ``backoff_delay(n, strategy, …)`` after its n-th failure and tries again.
    Simulated time: the result does not depend on how busy the machine is."""
    if clients < 1:
        raise ValueError("clients must be >= 1")
    rng = np.random.default_rng(seed)
    # heap of (commit time, client, read time, failures so far, last sleep); client breaks ties

    def duration() -> float:  # ms; calls vary a little, as on a real network
        return call_ms * float(rng.uniform(1 - call_spread, 1 + call_spread))

    heap: list[tuple[float, int, float, int, float | None]] = [
        (duration(), c, 0.0, 0, None) for c in range(clients)]
    heapq.heapify(heap)
    last_commit, calls, finish = -np.inf, clients, []  # ms of the last write; attempts; done
    while heap:
        commit_at, client, read_at, failures, slept = heapq.heappop(heap)
        if last_commit <= read_at:  # nobody wrote since we read: our write wins
            last_commit = commit_at
            finish.append(commit_at)
            continue
        sleep = backoff_delay(failures, strategy, base_ms, cap_ms, rng, previous=slept)
        retry_read = commit_at + sleep
        heapq.heappush(heap, (retry_read + duration(), client, retry_read, failures + 1, sleep))
        calls += 1
    return ContentionResult(strategy, clients, calls, np.sort(np.array(finish)))


def contention_figure() -> go.Figure:
    """The empty figure that :func:`contention_view` fills (two traces: chosen, no jitter)."""
    fig = plots.figure("Clients done over time, one contended resource",
                       x=("time since the herd arrived", "s"), y=("clients done", None))
    fig.add_scatter(x=[], y=[], mode="lines", name="chosen strategy", line=dict(shape="hv"))
    fig.add_scatter(x=[], y=[], mode="lines", name="no jitter (baseline)",
                    line=dict(shape="hv", dash="dot"))
    return fig


def contention_view(fig: go.Figure, clients: int = 50, strategy: Strategy = "full",
                    seed: int = 0) -> str:
    """Widget callback: simulate ``clients`` under ``strategy`` and under no jitter, draw
    both completion curves into ``fig`` and return a one-line summary."""
    chosen = simulate_contention(clients, strategy, seed=seed)
    baseline = simulate_contention(clients, "none", seed=seed)
    steps = np.arange(1, clients + 1)
    with fig.batch_update() if isinstance(fig, go.FigureWidget) else nullcontext():
        fig.data[0].x, fig.data[0].y = chosen.finish_times / 1000, steps
        fig.data[0].name = STRATEGY_NAMES[strategy]
        fig.data[1].x, fig.data[1].y = baseline.finish_times / 1000, steps
    return (f"{clients} clients: {STRATEGY_NAMES[strategy]} finishes in "
            f"{chosen.completion_ms / 1000:.2f} s with {chosen.calls} calls; no jitter needs "
            f"{baseline.completion_ms / 1000:.2f} s and {baseline.calls} calls "
            f"({baseline.completion_ms / max(chosen.completion_ms, 1e-9):.1f}x the time, "
            f"{baseline.calls / chosen.calls:.1f}x the calls).")


def contention_sweep(client_counts: list[int], strategies: tuple[Strategy, ...] = STRATEGIES,
                     seeds: int = 3, **kwargs: Any) -> dict[Strategy, dict[str, np.ndarray]]:
    """Mean calls and mean completion time (ms) per strategy and client count."""
    out: dict[Strategy, dict[str, np.ndarray]] = {}
    for s in strategies:
        runs = [[simulate_contention(n, s, seed=k, **kwargs) for k in range(seeds)]
                for n in client_counts]
        out[s] = {"clients": np.array(client_counts),
                  "calls": np.array([np.mean([r.calls for r in rs]) for rs in runs]),
                  "completion_ms": np.array([np.mean([r.completion_ms for r in rs]) for rs in runs])}
    return out
