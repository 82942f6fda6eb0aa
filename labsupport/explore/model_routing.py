"""Explore and Measure for ``notebooks/04_model_routing.ipynb``: the cascade, the α sweep,
RouteLLM's metrics (APGR, CPT) and the cost–quality figure with its widget callback.

The routers and the cost model are in :mod:`labsupport.model_routing`; this module only
measures them. The cascade is measured with a simulated scorer, RouteLLM's metrics follow
Ong et al., 2024 (arXiv:2406.18665).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labsupport import model_routing as mr
from labsupport.model_routing import (
    DAILY_REQUESTS,
    LARGE,
    SMALL,
    SMALL_FAILURE_RATE,
    Backend,
    Outcome,
    Request,
)

# --- the cascade (FrugalGPT's idea) -------------------------------------------------


def small_model_confidence(requests: Sequence[Request], fails: np.ndarray,
                           seed: int = 0) -> np.ndarray:
    """A simulated confidence score for the small model's answer (a scorer/verifier).

    Assumption: right answers score Beta(6, 2) (mean 0.75), wrong ones Beta(2, 3)
    (mean 0.40). The overlap is why a cascade both escalates some right answers and
    keeps some wrong ones.
    """
    rng = np.random.default_rng(seed + 1_000)
    right = rng.beta(6, 2, size=len(requests))
    wrong = rng.beta(2, 3, size=len(requests))
    return np.where(fails, wrong, right)


def evaluate_cascade(requests: Sequence[Request], threshold: float, *,
                     small: Backend = SMALL, large: Backend = LARGE,
                     daily_requests: int = DAILY_REQUESTS,
                     failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Outcome:
    """Try small first; escalate to large when its confidence is below ``threshold``.

    Every request pays for the small call; an escalated one also pays for the large call
    and waits for both, one after the other.
    """
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    fails = mr.small_model_fails(requests, failure_rate, seed)
    escalate = small_model_confidence(requests, fails, seed) < threshold
    cost = small.cost_usd(prompt, out) + np.where(escalate, large.cost_usd(prompt, out), 0.0)
    latency = small.latency_s(out) + np.where(escalate, large.latency_s(out), 0.0)
    wrong = fails & ~escalate
    is_complex = mr.labels_of(requests)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    return Outcome(len(requests), float(escalate.mean()), float(cost.mean() * daily_requests),
                   float(1 - wrong.mean()), float(latency.mean()), float(p95), float(p50),
                   float(p99), int((is_complex & ~escalate).sum()), int(is_complex.sum()))


# --- RouteLLM's metrics -------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """A router's operating points as its threshold sweeps, sorted by share to large."""

    share_large: np.ndarray  # fraction of calls to the strong model, 0 … 1
    quality: np.ndarray
    daily_cost_usd: np.ndarray
    alphas: np.ndarray  # the threshold of each point (inf = nothing to large)


def sweep(requests: Sequence[Request], scores: np.ndarray, *, small: Backend = SMALL,
          large: Backend = LARGE, daily_requests: int = DAILY_REQUESTS,
          failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Curve:
    """Every distinct operating point of ``large if score ≥ α``, from α = ∞ (all small)
    down to the lowest score (all large). Vectorised: one sort, then cumulative sums."""
    scores = np.asarray(scores, dtype=float)
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    extra_cost = large.cost_usd(prompt, out) - small.cost_usd(prompt, out)  # per request
    gain = mr.small_model_fails(requests, failure_rate, seed).astype(float)  # 1 = fixed by large
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    # Only the last index of each run of equal scores is an operating point.
    last = np.r_[s[1:] != s[:-1], True]
    n = len(requests)
    k = np.r_[0, np.flatnonzero(last) + 1]  # number of requests sent to large
    base_cost = small.cost_usd(prompt, out).sum()
    cost = (base_cost + np.r_[0.0, np.cumsum(extra_cost[order])][k]) / n * daily_requests
    quality = 1 - (gain.sum() - np.r_[0.0, np.cumsum(gain[order])][k]) / n
    alphas = np.r_[np.inf, s[last]]
    return Curve(k / n, quality, cost, alphas)


def pgr(quality: Any, weak_quality: float, strong_quality: float) -> Any:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong one's."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        raise ValueError("the strong model must be better than the weak one")
    return (np.asarray(quality, dtype=float) - weak_quality) / gap


def apgr(share_large: Any, pgr_values: Any) -> float:
    """Average PGR: the area under PGR as a function of the share of strong calls, over
    [0, 1] (trapezoids over every operating point)."""
    x = np.asarray(share_large, dtype=float)
    y = np.asarray(pgr_values, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[0] > 0 or x[-1] < 1:
        raise ValueError("the curve must span 0 % to 100 % calls to the strong model")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpt(share_large: Any, pgr_values: Any, target: float = 0.5) -> float:
    """Call-performance threshold: the smallest share of strong calls at which PGR reaches
    ``target`` (linear between measured points). CPT(50 %) of a random router is 0.5."""
    x = np.asarray(share_large, dtype=float)
    y = np.asarray(pgr_values, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    hit = np.flatnonzero(y >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


def alpha_for_recall(scores: Any, is_complex: Any, catch: float = 0.99) -> float:
    """The largest threshold α that still sends at least ``catch`` of the complex requests
    to the large model (P(complex) ≥ α), from scores that never saw those requests
    (:func:`labsupport.model_routing.cross_val_scores` on the training split)."""
    complex_scores = np.sort(np.asarray(scores, dtype=float)[np.asarray(is_complex, dtype=bool)])
    allowed_misses = int(np.floor((1 - catch) * len(complex_scores) + 1e-9))
    return float(complex_scores[allowed_misses])


def curve_metrics(curve: Curve) -> dict[str, float]:
    """APGR and CPT(50 %) of a swept curve (weak = all small, strong = all large)."""
    weak, strong = float(curve.quality[0]), float(curve.quality[-1])
    values = pgr(curve.quality, weak, strong)
    return {"apgr": apgr(curve.share_large, values), "cpt50": cpt(curve.share_large, values)}


# --- the explore panel --------------------------------------------------------------


@dataclass
class RoutingLab:
    """Everything the notebook's figure shows, computed once; callbacks only look up."""

    requests: list[Request]
    scores: np.ndarray  # classifier P(complex) on ``requests``
    curve: Curve  # the classifier's sweep
    random_curve: Curve
    cascade: list[Outcome]  # one per cascade threshold
    cascade_thresholds: np.ndarray
    points: dict[str, Outcome]  # all small, all large, oracle, rules

    def at(self, alpha: float) -> Outcome:
        return mr.evaluate(self.requests, mr.threshold_routes(self.scores, alpha))


def build_lab(requests: Sequence[Request], scores: np.ndarray, seed: int = 0) -> RoutingLab:
    """Precompute the curves and reference points for ``requests`` (the test split)."""
    requests = list(requests)
    cascade_t = np.linspace(0.0, 1.0, 41)
    points = {"all small": mr.evaluate(requests, mr.all_small(requests)),
              "all large": mr.evaluate(requests, mr.all_large(requests)),
              "oracle": mr.evaluate(requests, mr.oracle_router(requests)),
              "rules": mr.evaluate(requests, mr.rules_router(requests))}
    return RoutingLab(requests, np.asarray(scores), sweep(requests, scores),
                      sweep(requests, mr.random_scores(len(requests), seed)),
                      [evaluate_cascade(requests, t) for t in cascade_t], cascade_t, points)


def build_figure(lab: RoutingLab, alpha: float = 0.5) -> Any:
    """The cost–quality figure: classifier curve, random line, cascade, reference points,
    and a marker for the operating point at ``alpha`` (the last trace)."""
    from labsupport import plots

    fig = plots.figure("Cost–quality curve on the test split", ("daily cost", "USD/day"),
                       ("quality: requests answered correctly", "%"), height=430)
    fig.add_scatter(x=lab.random_curve.daily_cost_usd, y=100 * lab.random_curve.quality,
                    mode="lines", name="random router", line=dict(dash="dot"))
    fig.add_scatter(x=[o.daily_cost_usd for o in lab.cascade],
                    y=[100 * o.quality for o in lab.cascade], mode="lines",
                    name="cascade (small first)", line=dict(dash="dash"))
    fig.add_scatter(x=lab.curve.daily_cost_usd, y=100 * lab.curve.quality, mode="lines",
                    name="classifier, α swept", line=dict(width=3))
    # Reference points in black, told apart by symbol and named by their own label (so
    # not in the legend); the moving marker in vermillion.
    for name, symbol, where in (("all small", "circle", "bottom right"),
                                ("all large", "square", "bottom left"),
                                ("oracle", "star", "top center"),
                                ("rules", "diamond", "bottom left")):
        o = lab.points[name]
        fig.add_scatter(x=[o.daily_cost_usd], y=[100 * o.quality], mode="markers+text",
                        name=name, text=[name], textposition=where, showlegend=False,
                        marker=dict(size=11, symbol=symbol, color="#000000"))
    o = lab.at(alpha)
    fig.add_scatter(x=[o.daily_cost_usd], y=[100 * o.quality], mode="markers",
                    name="your α", marker=dict(size=16, color="#D55E00",
                                               line=dict(width=2, color="#000000")))
    low = 100 * float(lab.points["all small"].quality)
    fig.update_yaxes(range=[low - 2, 101.5])
    return fig


def update_figure(fig: Any, lab: RoutingLab, alpha: float) -> str:
    """Widget callback: move the α marker and return the one-line summary."""
    o = lab.at(alpha)
    marker = fig.data[-1]
    if hasattr(fig, "batch_update"):
        with fig.batch_update():
            marker.x, marker.y = [o.daily_cost_usd], [100 * o.quality]
    else:
        marker.x, marker.y = [o.daily_cost_usd], [100 * o.quality]
    return summarise(lab, alpha, o)


def backends_table(backends: Sequence[Backend]) -> Any:
    """Each backend's list prices, the date they were read, and its latency profile."""
    from labsupport import plots

    return plots.Table([{"model": b.name, "input (USD per 1M tokens)": b.input_usd_per_mtok,
                         "output (USD per 1M tokens)": b.output_usd_per_mtok,
                         "prices as of": b.prices_as_of, "TTFT (s)": b.ttft_s,
                         "output tokens/s": 1 / b.s_per_output_token} for b in backends],
                       formats={"input (USD per 1M tokens)": ".2f",
                                "output (USD per 1M tokens)": ".2f", "TTFT (s)": ".2f",
                                "output tokens/s": ".0f"})


def outcome_table(outcomes: dict[str, Outcome], base: Outcome | None = None,
                  caption: str | None = None) -> Any:
    """One row per named routing: share to large, cost per day, saving against ``base``
    (e.g. all-large, when given), quality, latency, complex requests sent to small."""
    from labsupport import plots

    rows = []
    for name, o in outcomes.items():
        row = {"router": name, "to large (%)": 100 * o.share_large,
               "cost (USD/day)": o.daily_cost_usd}
        if base is not None:
            row["saving (%)"] = 100 * (1 - o.daily_cost_usd / base.daily_cost_usd)
        row |= {"quality (%)": 100 * o.quality, "p50 latency (s)": o.p50_latency_s,
                "p99 latency (s)": o.p99_latency_s,
                "complex → small": f"{o.complex_to_small} of {o.n_complex}"}
        rows.append(row)
    return plots.Table(rows, formats={"to large (%)": ".0f", "cost (USD/day)": ",.2f",
                                      "saving (%)": ".1f", "quality (%)": ".1f",
                                      "p50 latency (s)": ".2f", "p99 latency (s)": ".2f"},
                       align={"complex → small": "right"}, caption=caption)


def summarise(lab: RoutingLab, alpha: float, o: Outcome | None = None) -> str:
    o = o or lab.at(alpha)
    ref = lab.points["all large"]
    return (f"α = {alpha:.2f}: {100 * o.share_large:.0f}% to large, "
            f"${o.daily_cost_usd:.2f}/day ({100 * (1 - o.daily_cost_usd / ref.daily_cost_usd):.0f}%"
            f" below all-large), quality {100 * o.quality:.1f}%, "
            f"{o.complex_to_small}/{o.n_complex} complex requests sent to small")
