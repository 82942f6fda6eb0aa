"""Explore and Measure of ``02_load_balancing.ipynb``: the widget's figure and callback,
and the policies side by side at noon.

:func:`explore_figure` and :func:`update_explore` drive the Explore panel (the notebook
also calls the callback once directly, so it reads without a kernel);
:func:`compare_policies` and :func:`format_rows` make the Measure table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labsupport import load_balancing as lb
from labsupport.checks import load_balancing as checks

# --- measure: policies side by side -----------------------------------------------------


def compare_policies(balancers: dict[str, lb.Balancer | lb.Policy],
                     scenario: checks.Scenario = checks.NOON,
                     seed: int = 0) -> list[dict[str, Any]]:
    """One row per policy at noon with the slow server: p99s and each server's share."""
    rows = []
    for name, balancer in balancers.items():
        r = checks.noon_report(balancer, scenario, seed)
        n = scenario.n_requests + int(scenario.noon_rate * scenario.warm_seconds)
        result = checks.after(lb.simulate(scenario.cluster(slow=True), balancer, n, seed=seed),
                              scenario.warm_seconds)
        rows.append({"policy": name, "p99 all (s)": r.p99_slow_fleet,
                     "p99 slow server's users (s)": r.slow_server_p99,
                     "p99 healthy fleet (s)": r.p99_healthy_fleet,
                     "slower than 5x median (%)": 100 * r.slow_fraction,
                     "share per server (%)": [round(100 * float(x), 1) for x in result.share()]})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`compare_policies` rows."""
    lines = [f"{'policy':<34}{'p99 all':>9}{'p99 slow srv':>13}{'p99 healthy':>12}"
             f"{'>5x med':>9}   share per server (%)"]
    for r in rows:
        lines.append(f"{r['policy']:<34}{r['p99 all (s)']:>8.3f}s"
                     f"{r['p99 slow server' + chr(39) + 's users (s)']:>12.2f}s"
                     f"{r['p99 healthy fleet (s)']:>11.3f}s"
                     f"{r['slower than 5x median (%)']:>8.2f}%   {r['share per server (%)']}")
    return "\n".join(lines)


# --- explore: the widget callback -------------------------------------------------------


def explore_figure() -> Any:
    """An empty two-panel figure (latency per server, p50/p99 per server) for the explorer."""
    from plotly.subplots import make_subplots

    from labsupport import plots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=("latency distribution per server",
                                        "p50 and p99 per server"))
    fig.add_box(name="latency", row=1, col=1, boxpoints=False,
                marker_color=plots.PALETTE[0], showlegend=False)
    fig.add_bar(name="p50", row=1, col=2, marker_color=plots.PALETTE[0])
    fig.add_bar(name="p99", row=1, col=2, marker_color=plots.PALETTE[3])
    fig.update_layout(template="labsupport", height=380, barmode="group",
                      legend=dict(orientation="h", y=-0.2))
    fig.update_yaxes(title_text=plots.axis_title("latency", "s"), type="log", row=1, col=1)
    fig.update_yaxes(title_text=plots.axis_title("latency", "s"), type="log", row=1, col=2)
    fig.update_xaxes(title_text="server", row=1, col=1)
    fig.update_xaxes(title_text="server", row=1, col=2)
    return fig


def update_explore(fig: Any, traffic: float = 3.0, policy: str = "round-robin",
                   slowdown: float = 10.0, n_servers: int = 10, seed: int = 0,
                   n_requests: int = 4_000) -> str:
    """Simulate one setting and redraw ``fig`` (from :func:`explore_figure`) in place.

    ``traffic`` is relative to 9am (3 = noon); server 3 (or the last one, in a small fleet)
    runs ``slowdown`` times slower. Returns a one-line summary of what the figure shows.
    """
    noon = checks.NOON
    slow = min(noon.slow_server, n_servers - 1)
    per_server = noon.noon_rate / noon.n_servers / 3  # requests/s per server at 9am
    cluster = lb.Cluster(n_servers=n_servers, arrival_rate=per_server * n_servers * traffic,
                         service=noon.service, workers=noon.workers)
    if slowdown > 1:
        cluster = cluster.with_slow_server(slow, 1.0 / slowdown)
    result = lb.simulate(cluster, lb.POLICIES[policy], n_requests, seed=seed,
                         warmup=n_requests // 4)
    names = [f"s{i}" + (" (slow)" if i == slow and slowdown > 1 else "")
             for i in range(n_servers)]
    stats = []
    for i in range(n_servers):
        lat = result.latency[result.server == i]
        stats.append(np.percentile(lat, [1, 25, 50, 75, 99]) if lat.size else [np.nan] * 5)
    q = np.array(stats)
    with fig.batch_update():
        fig.data[0].update(x=names, lowerfence=q[:, 0], q1=q[:, 1], median=q[:, 2],
                           q3=q[:, 3], upperfence=q[:, 4])
        fig.data[1].update(x=names, y=q[:, 2])
        fig.data[2].update(x=names, y=q[:, 4])
    share = result.share()
    return (f"{policy}, traffic ×{traffic:g} (utilization {100 * cluster.utilization:.0f}%): "
            f"p99 all {result.percentile(99):.3f} s; slow server s{slow} took "
            f"{100 * share[slow]:.1f}% of requests, its p99 "
            f"{result.percentile(99, slow):.2f} s")
