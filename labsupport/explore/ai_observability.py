"""The dashboard, the widget callback and two worked examples of notebook 06.

Backs ``notebooks/06_ai_observability.ipynb`` (the mechanism is
``labsupport/ai_observability.py``): :func:`dashboard_series` turns scrapes of
``/metrics`` into what a Grafana dashboard plots, :func:`dashboard_figure` draws it,
:func:`explore` is the widget callback; :func:`prometheus_docs_example` and
:func:`averaging_p99_example` are the worked examples behind "percentiles from
histogram buckets" and "never average percentiles".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from labsupport.ai_observability import (
    RUNNING_METRIC,
    TOKENS_METRIC,
    TTFT_METRIC,
    WAITING_METRIC,
    EngineConfig,
    bucketize,
    capacity_estimate,
    histogram_quantile,
    make_workload,
    percentile,
    simulate,
)
from labsupport.services.ai_observability import scrapes_from_simulation

# --- worked examples ----------------------------------------------------------------


def prometheus_docs_example() -> dict[str, float]:
    """The example of prometheus.io/docs/practices/histograms: buckets 0.1, 0.2, 0.3 and
    0.45 s, every request at 220 ms (then 320 ms). The p95 reported is 295 ms (442.5 ms)."""
    bounds = [0.1, 0.2, 0.3, 0.45, math.inf]
    out = {}
    for label, value in (("spike_220ms", 0.220), ("spike_320ms", 0.320)):
        samples = np.full(1000, value)
        out[f"{label}_true_p95_s"] = percentile(samples, 95)
        out[f"{label}_histogram_p95_s"] = histogram_quantile(0.95, bounds,
                                                             bucketize(samples, bounds))
    return out


def averaging_p99_example() -> dict[str, float]:
    """Server A: 900 requests at 10 ms; server B: 100 at 1,000 ms. The mean of the two
    p99s is 505 ms; the p99 of all 1,000 requests is 1,000 ms."""
    a, b = np.full(900, 0.010), np.full(100, 1.000)
    p99_a, p99_b = percentile(a, 99), percentile(b, 99)
    return {"p99_a_s": p99_a, "p99_b_s": p99_b, "mean_of_p99s_s": (p99_a + p99_b) / 2,
            "pooled_p99_s": percentile(np.concatenate([a, b]), 99)}


# --- the dashboard --------------------------------------------------------------------


def dashboard_series(scrapes: Sequence[dict[str, Any]], window_s: float = 2.0) -> dict[str, np.ndarray]:
    """Per window of ``window_s``: TTFT p50 and p99 from the histogram's bucket increase
    (what ``histogram_quantile(0.99, rate(..._bucket[w]))`` computes), tokens per second
    from the counter's increase, the gauges at the window's end, and mean CPU."""
    out: dict[str, list[float]] = {k: [] for k in ("t_s", "ttft_p50_s", "ttft_p99_s",
                                                  "tokens_per_s", "waiting", "running",
                                                  "cpu_percent")}
    start = 0
    for i in range(1, len(scrapes)):
        a, b = scrapes[start], scrapes[i]
        if b["t_s"] - a["t_s"] < window_s - 1e-9 and i < len(scrapes) - 1:
            continue
        dt = b["t_s"] - a["t_s"]
        if dt <= 0:
            continue
        hist_a, hist_b = a[TTFT_METRIC], b[TTFT_METRIC]
        delta = [y - x for x, y in zip(hist_a["cumulative"], hist_b["cumulative"], strict=True)]
        out["t_s"].append(b["t_s"])
        out["ttft_p50_s"].append(histogram_quantile(0.50, hist_b["le"], delta))
        out["ttft_p99_s"].append(histogram_quantile(0.99, hist_b["le"], delta))
        out["tokens_per_s"].append((b[TOKENS_METRIC] - a[TOKENS_METRIC]) / dt)
        out["waiting"].append(b[WAITING_METRIC])
        out["running"].append(b[RUNNING_METRIC])
        out["cpu_percent"].append(float(np.mean([s["cpu_percent"] for s in scrapes[start + 1:i + 1]])))
        start = i
    return {k: np.array(v) for k, v in out.items()}


_PANELS = (("ttft", "TTFT (s)"), ("tokens", "tokens/s"), ("waiting", "waiting"),
           ("running", "running"), ("cpu", "CPU (%)"))


def dashboard_figure(series: dict[str, np.ndarray], title: str = "LLM server dashboard",
                     cpu_label: str = "process CPU") -> Any:
    """Five stacked panels sharing the time axis: TTFT p50/p99, tokens/s, queue depth,
    running requests, CPU. Traces are in a fixed order so a widget can update them."""
    from plotly.subplots import make_subplots

    from labsupport import plots

    fig = make_subplots(rows=5, cols=1, shared_xaxes=True, vertical_spacing=0.045,
                        subplot_titles=("TTFT per window (histogram_quantile): p50 and p99",
                                        "token throughput", "queue depth (waiting requests)",
                                        "running requests (batch)", cpu_label))
    colours = plots.PALETTE
    t = series["t_s"]
    fig.add_scatter(x=t, y=series["ttft_p50_s"], name="TTFT p50", row=1, col=1,
                    line=dict(color=colours[0]))
    fig.add_scatter(x=t, y=series["ttft_p99_s"], name="TTFT p99", row=1, col=1,
                    line=dict(color=colours[3], dash="dash"))
    # One line per panel below, named by the panel's title: only TTFT needs a legend.
    fig.add_scatter(x=t, y=series["tokens_per_s"], name="tokens/s", row=2, col=1,
                    line=dict(color=colours[2]), showlegend=False)
    fig.add_scatter(x=t, y=series["waiting"], name="waiting", row=3, col=1,
                    line=dict(color=colours[1], shape="hv"), showlegend=False)
    fig.add_scatter(x=t, y=series["running"], name="running", row=4, col=1,
                    line=dict(color=colours[4], shape="hv"), showlegend=False)
    fig.add_scatter(x=t, y=series["cpu_percent"], name="CPU %", row=5, col=1,
                    line=dict(color=colours[7]), showlegend=False)
    for row, (_, label) in enumerate(_PANELS, start=1):
        fig.update_yaxes(title_text=label, row=row, col=1)
    fig.update_yaxes(range=[0, 100], row=5, col=1)
    fig.update_xaxes(title_text=plots.axis_title("time", "simulated s"), row=5, col=1)
    fig.update_layout(title=title, height=840, showlegend=True)
    return plots.style(fig)


def dashboard_summary(series: dict[str, np.ndarray]) -> str:
    """One line that says what the dashboard shows."""
    return (f"peak TTFT p99 {np.nanmax(series['ttft_p99_s']):.2f} s, "
            f"peak queue {np.max(series['waiting']):.0f}, "
            f"mean tokens/s {np.mean(series['tokens_per_s']):.0f}, "
            f"mean CPU {np.mean(series['cpu_percent']):.0f}%")


def explore(fig: Any, offered_load: float = 4.0, slots: int = 8, *, seed: int = 7,
            duration_s: float = 40.0) -> str:
    """The widget callback: simulate ``offered_load`` requests/s on ``slots`` batch slots
    offline and redraw the dashboard ``fig`` (a FigureWidget from dashboard_figure)."""
    config = replace(EngineConfig(), slots=int(slots))
    sim = simulate(make_workload(offered_load, duration_s, seed), config)
    series = dashboard_series(scrapes_from_simulation(sim, 1.0))
    keys = ("ttft_p50_s", "ttft_p99_s", "tokens_per_s", "waiting", "running", "cpu_percent")
    with fig.batch_update():
        for trace, key in zip(fig.data, keys, strict=True):
            trace.x = series["t_s"]
            trace.y = series[key]
    capacity = capacity_estimate(config)
    return (f"{offered_load:.1f} req/s on {slots} slots (capacity ≈ {capacity:.1f} req/s, "
            f"load {offered_load / capacity:.0%}): " + dashboard_summary(series))

