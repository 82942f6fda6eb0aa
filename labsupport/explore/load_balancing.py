"""Explore and Measure of ``02_load_balancing.ipynb``: the widget's figure and callback,
and the policies side by side at noon.

:func:`explore_figure` and :func:`update_explore` drive the Explore panel (the notebook
also calls the callback once directly, so it reads without a kernel);
:func:`compare_policies`, :func:`policy_table` and :func:`share_table` make the Measure
tables, :func:`theory_table` the check against queueing theory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labsupport import load_balancing as lb
from labsupport import plots
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


def policy_table(rows: list[dict[str, Any]]) -> plots.Table:
    """The latency columns of :func:`compare_policies` rows, as a table."""
    columns = ["policy", "p99 all (s)", "p99 slow server's users (s)", "p99 healthy fleet (s)",
               "slower than 5x median (%)"]
    return plots.Table(rows, columns, formats={"p99 all (s)": ".3f",
                                               "p99 slow server's users (s)": ".2f",
                                               "p99 healthy fleet (s)": ".3f",
                                               "slower than 5x median (%)": ".2f"})


def share_table(rows: list[dict[str, Any]], slow: int | None = None) -> plots.Table:
    """Each policy's share of requests per server (%), one column per server; the column
    of server ``slow`` says so."""
    n = len(rows[0]["share per server (%)"])
    names = [f"s{i}" + (" (slow)" if i == slow else "") for i in range(n)]
    return plots.Table(
        [{"policy": r["policy"], **dict(zip(names, r["share per server (%)"], strict=True))}
         for r in rows],
        ["policy", *names], formats=dict.fromkeys(names, ".1f"),
        caption="share of requests per server (%)")


def theory_table(rows: list[dict[str, Any]]) -> plots.Table:
    """Theory against simulation: rows with model, theory, simulated, requests, seconds;
    adds the gap and whether it is within 5 %."""
    out = []
    for r in rows:
        gap = 100 * (r["simulated"] / r["theory"] - 1)
        out.append({"model": r["model"], "theory (s)": r["theory"],
                    "simulated (s)": r["simulated"], "gap (%)": gap,
                    "within 5%": "ok" if abs(gap) <= 5 else "OFF",
                    "requests": r["requests"], "run time (s)": r["seconds"]})
    return plots.Table(out, formats={"theory (s)": ".3f", "simulated (s)": ".3f",
                                     "gap (%)": "+.1f", "run time (s)": ".1f"})


# --- explore: the widget callback -------------------------------------------------------


def explore_figure() -> Any:
    """An empty two-panel figure (latency per server, p50/p99 per server) for the explorer."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.1,
                        subplot_titles=("latency distribution per server",
                                        "p50 and p99 per server"))
    fig.add_box(name="latency", row=1, col=1, boxpoints=False,
                marker_color=plots.PALETTE[0], showlegend=False)
    fig.add_bar(name="p50", row=1, col=2, marker_color=plots.PALETTE[0])
    fig.add_bar(name="p99", row=1, col=2, marker_color=plots.PALETTE[3])
    fig.update_layout(height=400, barmode="group")
    for col in (1, 2):
        # Latencies span four decades (ms to minutes): label the decades only.
        plots.log_axis(fig, "y", row=1, col=col, steps=(1,),
                       title_text=plots.axis_title("latency", "s"))
        fig.update_xaxes(title_text="server", type="category", row=1, col=col)
    return plots.style(fig)


def update_explore(fig: Any, traffic: float = 3.0, policy: str = "round-robin",
                   slowdown: float = 10.0, n_servers: int = 10, seed: int = 0,
                   n_requests: int = 4_000) -> str:
    """Simulate one setting and redraw ``fig`` (from :func:`explore_figure`) in place.

    ``traffic`` is relative to 9am (3 = noon); server 3 (or the last one, in a small fleet)
    runs ``slowdown`` times slower (1: no slow server). Returns a one-line summary of what
    the figure shows.
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
    # Two-line tick label for the slow server: short enough never to need rotating.
    names = [f"s{i}" + ("<br>(slow)" if i == slow and slowdown > 1 else "")
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
    text = (f"{policy}, traffic ×{traffic:g} (utilization {100 * cluster.utilization:.0f}%): "
            f"p99 all {result.percentile(99):.3f} s; ")
    if slowdown > 1:
        return text + (f"slow server s{slow} ({slowdown:g}x slower) took "
                       f"{100 * share[slow]:.1f}% of requests, its p99 "
                       f"{result.percentile(99, slow):.2f} s")
    busiest = int(np.argmax(share))
    return text + (f"no slow server; the busiest, s{busiest}, took {100 * share[busiest]:.1f}% "
                   f"of requests (an even share: {100 / n_servers:.1f}%)")
