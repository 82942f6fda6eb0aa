"""Explore and measure for ``03_message_queues.ipynb``: the queue in simulated time, the
widget's figure and callback, and Little's law on a :func:`run_pipeline` run (the real
queue and workers on the simulated clock; its times are simulated seconds).

:func:`simulate` runs the same queue semantics as ``labsupport.message_queues.Queue``
(visibility timeout, stale receipt handles, redrive to a DLQ) as an event simulation,
a few milliseconds per run, fast enough for a slider.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from labsupport import plots
from labsupport.services.message_queues import RunResult

# --- Little's law on a pipeline run ---------------------------------------------------


def littles_law(run: RunResult) -> dict[str, float]:
    """Check L = lambda W on a run that drained: L from the sampled depth, lambda and W
    from each message's send and delete times, over the interval [0, drain] (simulated
    seconds)."""
    if run.drained_at is None or not run.completed_at:
        raise ValueError("Little's law needs a run that drained")
    span = run.drained_at
    t, visible, in_flight = run.depth.T
    inside = t <= span
    area = np.trapezoid(visible[inside] + in_flight[inside], t[inside])
    L = area / span  # mean number of messages in the system
    done = [d for d in run.completed_at if d in run.sent_at]
    lam = len(done) / span  # arrivals per second that also left
    W = float(np.mean([run.completed_at[d] - run.sent_at[d] for d in done]))  # seconds
    return {"L": float(L), "lambda": lam, "W": W, "lambda_W": lam * W,
            "relative_error": abs(L - lam * W) / (lam * W)}


# --- simulated time: the widget's engine ----------------------------------------------


@dataclass
class SimResult:
    """One simulated run. ``t``, ``visible``, ``in_flight``, ``done`` are step series."""

    t: np.ndarray
    visible: np.ndarray
    in_flight: np.ndarray
    done: np.ndarray
    drained_at: float | None  # seconds; None if not empty by the horizon
    duplicates: int  # extra effects (a doc processed more than once)
    dead_lettered: int
    crashes: int
    ideal: float  # ceil(N / workers) x processing time


def simulate(n_jobs: int = 500, workers: int = 20, processing_time: float = 1.0,
             visibility_timeout: float = 3.0, crash_rate: float = 0.0,
             max_receive_count: int | None = 3, poison: int = 2, seed: int = 0,
             horizon: float | None = None) -> SimResult:
    """The same queue semantics in simulated time (an event simulation, milliseconds).

    All jobs arrive at t = 0. A worker receives the oldest visible message (by send); the job
    takes ``processing_time``; with probability ``crash_rate`` the worker crashes
    halfway (and restarts at once); a poison job fails after 20% of the time. A message
    not deleted reappears ``visibility_timeout`` after its receive; if it was received
    again meanwhile, the first worker's delete is refused (stale receipt handle).
    """
    rng = np.random.default_rng(seed)
    ideal = math.ceil(n_jobs / workers) * processing_time
    horizon = horizon if horizon is not None else 4 * ideal + 10 * visibility_timeout
    visible_at = np.zeros(n_jobs)
    gone = np.zeros(n_jobs, dtype=bool)
    received = np.zeros(n_jobs, dtype=int)
    token = np.zeros(n_jobs, dtype=int)  # bumps on each receive: the receipt handle
    is_poison = np.zeros(n_jobs, dtype=bool)
    is_poison[rng.choice(n_jobs, size=min(poison, n_jobs), replace=False)] = True
    effects = np.zeros(n_jobs, dtype=int)
    # events: (time, order, kind, worker, job, token)
    events: list[tuple[float, int, str, int, int, int]] = []
    order = 0
    for w in range(workers):
        events.append((0.0, order, "free", w, -1, 0))
        order += 1
    heapq.heapify(events)
    series: list[tuple[float, int, int, int]] = []
    dead = crashes = 0
    drained_at = None
    waiting: list[int] = []  # idle workers

    def record(now: float) -> None:
        alive = ~gone
        vis = int(np.sum(alive & (visible_at <= now)))
        series.append((now, vis, int(np.sum(alive)) - vis, int(np.sum(gone)) - dead))

    def push(at: float, kind: str, w: int = -1, job: int = -1, tok: int = 0) -> None:
        nonlocal order
        heapq.heappush(events, (at, order, kind, w, job, tok))
        order += 1

    record(0.0)
    while events:
        now, _, kind, w, job, tok = heapq.heappop(events)
        if now > horizon:
            break
        if kind == "complete":
            if not is_poison[job]:
                effects[job] += 1
                if token[job] == tok and not gone[job]:
                    gone[job] = True  # delete with the latest handle: acknowledged
            kind = "free"
        if kind == "tick":  # a visibility timeout ran out: wake idle workers
            idle, waiting = waiting, []
            for iw in idle:
                push(now, "free", iw)
        elif kind == "free":
            while True:
                candidates = np.where(~gone & (visible_at <= now))[0]
                if len(candidates) == 0:
                    waiting.append(w)
                    break
                j = int(candidates[0])  # the oldest send first, as Queue.receive does
                if max_receive_count is not None and received[j] >= max_receive_count:
                    gone[j] = True  # moved to the DLQ instead of delivered
                    dead += 1
                    continue
                received[j] += 1
                token[j] += 1
                visible_at[j] = now + visibility_timeout
                push(visible_at[j], "tick")
                if is_poison[j]:
                    push(now + 0.2 * processing_time, "free", w)  # fails: no delete
                elif rng.random() < crash_rate:
                    crashes += 1
                    push(now + 0.5 * processing_time, "free", w)  # dies mid-job
                else:
                    push(now + processing_time, "complete", w, j, int(token[j]))
                break
        record(now)
        if gone.all() and drained_at is None:
            drained_at = now
            break
    arr = np.array(series, dtype=float)
    duplicates = int(np.sum(np.maximum(effects - 1, 0)))
    return SimResult(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], drained_at, duplicates,
                     dead, crashes, ideal)


def sim_summary(sim: SimResult) -> str:
    drained = (f"drained at {sim.drained_at:.1f} s ({sim.drained_at / sim.ideal:.2f}x ideal "
               f"{sim.ideal:.1f} s)" if sim.drained_at is not None
               else f"NOT drained by {sim.t[-1]:.0f} s ({int(sim.visible[-1] + sim.in_flight[-1])}"
               " left)")
    return (f"{drained}; {sim.crashes} crashes, {sim.duplicates} duplicate effects, "
            f"{sim.dead_lettered} dead-lettered")


def depth_figure(title: str = "Queue depth over time (simulated)") -> go.Figure:
    """An empty figure with the three traces the widget updates."""
    fig = plots.figure(title, ("time", "s"), ("messages", None))
    for name in ("visible (waiting)", "in flight (being processed)", "done"):
        fig.add_scatter(x=[], y=[], mode="lines", name=name, line_shape="hv")
    return fig


def update_depth_figure(fig: go.Figure, workers: int = 20, crash_rate: float = 0.0,
                        visibility_timeout: float = 3.0, processing_time: float = 1.0,
                        n_jobs: int = 500, seed: int = 0) -> str:
    """The widget callback: simulate and redraw ``fig`` in place; returns a summary line."""
    sim = simulate(n_jobs, workers, processing_time, visibility_timeout, crash_rate, seed=seed)
    with fig.batch_update():
        for trace, ys in zip(fig.data, (sim.visible, sim.in_flight, sim.done), strict=True):
            trace.x, trace.y = sim.t, ys
        fig.layout.title.text = (f"{n_jobs} jobs, {workers} workers, crash rate {crash_rate:.0%}, "
                                 f"visibility timeout {visibility_timeout:.3g} s")
    return sim_summary(sim)


def real_depth_figure(run: RunResult, title: str | None = None) -> go.Figure:
    """Queue depth sampled during a :func:`run_pipeline` (the real queue and workers,
    on the simulated clock)."""
    fig = plots.figure(title or f"Pipeline run: {run.n_docs} documents, {run.workers} workers",
                       ("simulated time since first send", "s"), ("messages", None))
    t, visible, in_flight = run.depth.T
    fig.add_scatter(x=t, y=visible, mode="lines", name="visible (waiting)", line_shape="hv")
    fig.add_scatter(x=t, y=in_flight, mode="lines", name="in flight", line_shape="hv")
    if run.drained_at is not None:
        fig.add_vline(x=run.drained_at, line_dash="dot",
                      annotation_text=f"drained {run.drained_at:.2f} s")
    return fig
