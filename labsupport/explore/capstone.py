"""Figures, the live dashboard and the game day's operator view of notebook
08_capstone_ai_assistant."""

from __future__ import annotations

import html
from typing import Any

from labsupport import ai_observability as obs
from labsupport import capstone as cap
from labsupport import load_balancing as lb
from labsupport import plots
from labsupport.checks import capstone_gameday as gd

# --- the game day: what the operator sees ------------------------------------------------


def operator_view(incident: gd.Incident, evidence: gd.Evidence) -> Any:
    """The page, the dashboard's numbers and the last log lines of one incident: what an
    operator sees (not the fault's name)."""
    rows = [{"metric": k, "now": v} for k, v in evidence.items()
            if k != "logs" and not isinstance(v, list)]
    table = plots.Table(rows)
    logs = "\n".join(html.escape(line) for line in evidence.get("logs", []))
    return _HTML(f"<div style='background:#fff;color:#222;padding:6px 10px;border-left:4px "
                 f"solid #c0392b'><b>Page:</b> {html.escape(incident.page)}</div>"
                 + table._repr_html_()
                 + f"<pre style='background:#f6f6f6;color:#222;padding:6px'>{logs}</pre>",
                 f"PAGE: {incident.page}\n{table.to_text()}\n{chr(10).join(evidence.get('logs', []))}")


class _HTML:
    """HTML in a notebook, plain text elsewhere (papermill, a terminal)."""

    def __init__(self, markup: str, text: str) -> None:
        self.markup, self.text = markup, text

    def _repr_html_(self) -> str:
        return self.markup

    def __repr__(self) -> str:
        return self.text


def compare_table(before: gd.Evidence, after: gd.Evidence) -> plots.Table:
    """The same evidence before and after a fix, metric by metric."""
    rows = [{"metric": k, "during the incident": v, "with your fix": after.get(k)}
            for k, v in before.items() if k != "logs" and not isinstance(v, list)]
    return plots.Table(rows)


# --- Explore: the serving tier at noon (a simulation, fast enough for a slider) -------------


def tier_figure() -> Any:
    """Bars: p99 per replica; a line: the budget. A widget the callback redraws."""
    fig = plots.figure("p99 per replica at noon (replica 1 ten times slower)",
                       ("replica", None), ("p99 latency", "s"))
    fig.add_bar(name="p99 per replica", x=[], y=[], marker_color=plots.PALETTE[0])
    fig.add_scatter(name="p99 of all answers", x=[], y=[], mode="lines",
                    line=dict(color=plots.PALETTE[3], dash="dash"))
    fig.add_scatter(name=f"budget ({gd.P99_BUDGET_S:g} s)", x=[], y=[], mode="lines",
                    line=dict(color=plots.PALETTE[2], dash="dot"))
    plots.log_axis(fig, "y")
    return plots.figure_widget(fig)


def tier_update(fig: Any, balancer: str = "round-robin", outlier_ejection: bool = False,
                replicas: int = 3, traffic: float = 3.0) -> str:
    """The widget callback: 10,000 answers through the balancer with replica 1 at 1/10
    speed and ``traffic`` times the 9am rate; redraws ``fig`` and returns one line."""
    settings = cap.SHIPPED.with_changes({"balancer": balancer, "outlier_ejection": bool(outlier_ejection),
                                         "replicas": int(replicas)})
    cluster = lb.Cluster(n_servers=settings.replicas, arrival_rate=gd.BASE_RATE * traffic,
                         service=lb.Exponential(gd.ANSWER_MEAN_S), workers=gd.REPLICA_WORKERS)
    result = lb.simulate(cluster.with_slow_server(1 % settings.replicas, 0.1),
                         cap.balancer(settings), 10_000, seed=0, warmup=1_000)
    names = [f"replica {i}" for i in range(settings.replicas)]
    p99 = [float(result.percentile(99, i)) for i in range(settings.replicas)]
    overall = float(result.percentile(99))
    with fig.batch_update():
        fig.data[0].x, fig.data[0].y = names, p99
        fig.data[1].x, fig.data[1].y = [names[0], names[-1]], [overall, overall]
        fig.data[2].x, fig.data[2].y = [names[0], names[-1]], [gd.P99_BUDGET_S] * 2
    shares = ", ".join(f"{s:.0%}" for s in result.share())
    return (f"{balancer}{' + ejection' if outlier_ejection else ''}, {replicas} replicas, "
            f"traffic x{traffic:g}: p99 {overall:.2f} s (budget {gd.P99_BUDGET_S:g} s); "
            f"share per replica {shares}; {len(result.ejections)} ejections")


# --- Measure: the live dashboard -------------------------------------------------------------

TTFT = "assistant_time_to_first_token_seconds"
TOKENS = "assistant_generated_tokens_total"
QUEUE = "assistant_upload_queue_depth"
INGESTED = "assistant_documents_ingested_total"


class LiveDashboard:
    """A figure widget that redraws from each scrape of the gateway's ``/metrics``: TTFT
    p50 and p99 per interval (histogram_quantile over the buckets' increase), tokens per
    second, and the upload queue's depth with the documents ingested."""

    def __init__(self) -> None:
        import ipywidgets as widgets
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            subplot_titles=("time to first token, per interval (s)",
                                            "tokens per second", "uploads: queue depth and ingested"))
        colours = plots.PALETTE
        fig.add_scatter(x=[], y=[], name="TTFT p50", row=1, col=1, line=dict(color=colours[0]))
        fig.add_scatter(x=[], y=[], name="TTFT p99", row=1, col=1,
                        line=dict(color=colours[3], dash="dash"))
        fig.add_scatter(x=[], y=[], name="tokens/s", row=2, col=1, line=dict(color=colours[2]))
        fig.add_scatter(x=[], y=[], name="queue depth", row=3, col=1,
                        line=dict(color=colours[1], shape="hv"))
        fig.add_scatter(x=[], y=[], name="ingested", row=3, col=1, line=dict(color=colours[4]))
        fig.update_xaxes(title_text=plots.axis_title("time", "s"), row=3, col=1)
        fig.update_layout(title="the assistant's dashboard (live: scraped every 0.5 s)",
                          height=620)
        self.widget = plots.figure_widget(fig)
        self.status = widgets.Label("waiting for the first scrape")
        self.view = widgets.VBox([self.status, self.widget])  # what the notebook displays
        self.scrapes: list[tuple[float, dict[str, Any]]] = []
        self.series: dict[str, list[float]] = {k: [] for k in
                                                ("t", "p50", "p99", "tokens", "queue", "ingested")}

    def update(self, parsed: dict[str, Any], t_s: float) -> None:
        """Add one scrape (``parse_metrics`` of /metrics at ``t_s`` seconds) and redraw."""
        self.scrapes.append((t_s, parsed))
        self.status.value = (f"scrape {len(self.scrapes)} at {t_s:.1f} s: "
                             f"{parsed.get(TOKENS, 0.0):,.0f} tokens streamed, upload queue "
                             f"{parsed.get(QUEUE, 0.0):.0f}, {parsed.get(INGESTED, 0.0):.0f} ingested")
        if len(self.scrapes) < 2:
            return
        (t0, a), (t1, b) = self.scrapes[-2], self.scrapes[-1]
        le, delta = _ttft_increase(a, b)
        s = self.series
        s["t"].append(round(t1, 2))
        s["p50"].append(obs.histogram_quantile(0.5, le, delta) if delta[-1] else float("nan"))
        s["p99"].append(obs.histogram_quantile(0.99, le, delta) if delta[-1] else float("nan"))
        s["tokens"].append((b.get(TOKENS, 0.0) - a.get(TOKENS, 0.0)) / max(t1 - t0, 1e-9))
        s["queue"].append(b.get(QUEUE, 0.0))
        s["ingested"].append(b.get(INGESTED, 0.0))
        with self.widget.batch_update():
            for trace, key in zip(self.widget.data, ("p50", "p99", "tokens", "queue", "ingested"),
                                  strict=True):
                trace.x, trace.y = list(s["t"]), list(s[key])


def _ttft_increase(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The TTFT histogram's bucket increase between two scrapes, summed over replicas
    (what ``sum by (le) (increase(..._bucket[w]))`` gives)."""
    def total(scrape: dict[str, Any]) -> dict[float, float]:
        hist = scrape.get(TTFT) or {"le": [], "cumulative": []}
        summed: dict[float, float] = {}
        for bound, count in zip(hist["le"], hist["cumulative"], strict=True):
            summed[bound] = summed.get(bound, 0.0) + count  # one series per replica
        return summed

    before, after = total(a), total(b)
    if not after:
        return [float("inf")], [0.0]
    le = sorted(after)
    return le, [after[x] - before.get(x, 0.0) for x in le]
