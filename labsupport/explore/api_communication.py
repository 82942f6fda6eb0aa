"""Figures and widget callbacks of ``01_api_communication.ipynb``.

The Explore panel: how jitter breaks up a thundering herd, drawn from
:func:`labsupport.api_communication.simulate_contention` (simulated time, so the curves
do not depend on how busy the machine is).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np
import plotly.graph_objects as go

from labsupport import plots
from labsupport.api_communication import (
    STRATEGIES,
    STRATEGY_NAMES,
    Strategy,
    simulate_contention,
)


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
