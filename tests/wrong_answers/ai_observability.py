"""Wrong answers to notebook 06's scenario exercise ("the assistant feels slow").

Each is a ``diagnose(records, scrapes) -> dict`` a learner could plausibly write; the
checker must tell every one "not yet", with the named row failing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport.checks import ai_observability as checks
from labsupport.solutions import ai_observability as key

from . import Exercise, WrongAnswer, step

Diagnose = Callable[[list[obs.RequestRecord], list[dict[str, Any]]], dict]


def starter() -> Diagnose:
    """The notebook's untouched starter cell."""

    def diagnose(records, scrapes):
        """What users feel, and why. Edit me."""
        mean_latency_s = sum(r.token_times_s[-1] - r.start_s for r in records) / len(records)
        cpu_percent = sum(s["cpu_percent"] for s in scrapes) / len(scrapes)
        return {"mean_latency_s": mean_latency_s, "cpu_percent": cpu_percent,
                "cause": None, "metric": None}

    return diagnose


def _key_but(**changes: Callable[[list, list, dict], Any]) -> Diagnose:
    """The answer key with some entries computed another (wrong) way."""

    def diagnose(records, scrapes):
        answer = key.diagnose(records, scrapes)
        return {**answer, **{k: f(records, scrapes, answer) for k, f in changes.items()}}

    return diagnose


def _p99_from_histogram(records, scrapes, answer):
    ttft = scrapes[-1][obs.TTFT_METRIC]  # the +Inf bucket caps it at the top bound, 10 s
    return obs.histogram_quantile(0.99, ttft["le"], ttft["cumulative"])


def _hard_coded() -> Diagnose:
    def diagnose(records, scrapes):  # the notebook incident's numbers, copied from a run
        return {"ttft_p50_s": 9.43, "ttft_p99_s": 15.8, "tokens_per_s": 196.0,
                "e2e_p99_s": 17.1, "peak_queue_depth": 80.0,
                "cause": "queueing for batch slots", "metric": obs.WAITING_METRIC}

    return diagnose


def _p99_of_window_p99s(records, scrapes, answer):
    """The mean of per-10-second-window p99s: percentiles do not average."""
    ttfts = np.array([r.token_times_s[0] - r.start_s for r in records])
    starts = np.array([r.start_s for r in records])
    windows = [ttfts[(starts >= t) & (starts < t + 10)] for t in np.arange(0, starts.max() + 10, 10)]
    return float(np.mean([np.percentile(w, 99) for w in windows if w.size]))


def _cpu_diagnosis() -> Diagnose:
    def diagnose(records, scrapes):  # "CPU is what's busy": the wrong signal
        answer = key.diagnose(records, scrapes)
        cpu = np.mean([s["cpu_percent"] for s in scrapes])
        cause = "slow decode" if cpu > 25 else "long prompts"
        return {**answer, "cause": cause, "metric": "cpu_percent"}
    return diagnose


# --- the steps ------------------------------------------------------------------------------

def metrics_tpot_over_all_tokens():
    def request_metrics(record):
        ttft = record.token_times_s[0] - record.start_s
        e2e = record.token_times_s[-1] - record.start_s
        return ttft, (e2e - ttft) / len(record.token_times_s), e2e  # n, not n - 1
    return request_metrics


def metrics_tpot_zero_for_one_token():
    def request_metrics(record):
        ttft = record.token_times_s[0] - record.start_s
        e2e = record.token_times_s[-1] - record.start_s
        n = len(record.token_times_s)
        return ttft, (e2e - ttft) / (n - 1) if n > 1 else 0.0, e2e
    return request_metrics


def quantile_no_edge_cases():
    def hq(q, bounds, cumulative):
        rank = q * cumulative[-1]
        b = next(i for i, c in enumerate(cumulative) if c >= rank)
        if b == len(bounds) - 1:
            return bounds[-2]
        lower = bounds[b - 1] if b > 0 else 0.0
        below = cumulative[b - 1] if b > 0 else 0
        return lower + (bounds[b] - lower) * (rank - below) / max(cumulative[b] - below, 1)
    return hq


def quantile_inf_bucket_is_inf():
    def hq(q, bounds, cumulative):
        if q < 0 or q > 1 or math.isnan(q) or cumulative[-1] == 0:
            return key.histogram_quantile(q, bounds, cumulative)
        rank = q * cumulative[-1]
        b = next(i for i, c in enumerate(cumulative) if c >= rank)
        if b == len(bounds) - 1:
            return math.inf  # "above the top bound" is not a number Prometheus returns
        return key.histogram_quantile(q, bounds, cumulative)
    return hq


def quantile_upper_bound_only():
    def hq(q, bounds, cumulative):
        rank = q * cumulative[-1]
        b = next(i for i, c in enumerate(cumulative) if c >= rank)
        return bounds[b] if b < len(bounds) - 1 else bounds[-2]  # no interpolation
    return hq


def depth_mean_wait():
    def mean_queue_depth(waits_s, span_s):
        return sum(waits_s) / len(waits_s)  # a wait, not a depth
    return mean_queue_depth


def depth_count_over_span():
    def mean_queue_depth(waits_s, span_s):
        return len(waits_s) / span_s  # the arrival rate, λ, not λ · W
    return mean_queue_depth


def cause_from_cpu():
    def cause(snapshot):
        return ("slow decode", obs.TPOT_METRIC) if snapshot["cpu_percent"] > 25 else (
            "queueing for batch slots", obs.WAITING_METRIC)
    return cause


def cause_always_queueing():
    def cause(snapshot):
        return "queueing for batch slots", obs.WAITING_METRIC
    return cause


def cause_right_metric_wrong():
    def cause(snapshot):
        name, _ = key.cause_from_snapshot(snapshot)
        return name, obs.TTFT_METRIC  # TTFT shows that users wait, not why
    return cause


STEPS = [
    step(checks, 1, lambda: key.request_metrics, [
        WrongAnswer("TPOT over all tokens", "the first token is TTFT's, not decode's",
                    metrics_tpot_over_all_tokens, "200 unseen requests"),
        WrongAnswer("TPOT 0 for one token", "a zero drags TPOT percentiles down",
                    metrics_tpot_zero_for_one_token, "one-token"),
    ]),
    step(checks, 2, lambda: key.histogram_quantile, [
        WrongAnswer("no edge cases", "q outside [0, 1] and an empty histogram return numbers",
                    quantile_no_edge_cases, "edge case"),
        WrongAnswer("+Inf for the +Inf bucket", "Prometheus returns the highest finite bound",
                    quantile_inf_bucket_is_inf, "everything in +Inf"),
        WrongAnswer("the bucket's upper bound", "no interpolation inside the bucket",
                    quantile_upper_bound_only, "linear inside the bucket"),
    ]),
    step(checks, 3, lambda: key.mean_queue_depth, [
        WrongAnswer("the mean wait", "seconds, not requests", depth_mean_wait,
                    "time-average queue length"),
        WrongAnswer("requests over the span", "λ alone, not λ · W", depth_count_over_span,
                    "time-average queue length"),
    ]),
    step(checks, 4, lambda: key.cause_from_snapshot, [
        WrongAnswer("from CPU", "CPU measures the host, not the batch", cause_from_cpu,
                    "an unseen incident"),
        WrongAnswer("always queueing", "right once, wrong for other causes",
                    cause_always_queueing, "an unseen incident: slow decode"),
        WrongAnswer("the cause right, the metric TTFT", "TTFT shows that users wait, not why",
                    cause_right_metric_wrong, "an unseen incident"),
    ]),
]


EXERCISES = [
    *STEPS,
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: key.diagnose,
        gallery=[
            WrongAnswer("starter", "reports a mean latency and CPU: says nothing about the "
                        "tail users feel or its cause", starter, "ttft_p50_s"),
            WrongAnswer("p99 from the histogram", "histogram_quantile caps a p99 beyond the top "
                        "TTFT bound (10 s) at 10 s: the real tail is hidden",
                        lambda: _key_but(ttft_p99_s=_p99_from_histogram), "ttft_p99_s"),
            WrongAnswer("mean E2E as p99", "the mean hides the slow tail users complain about",
                        lambda: _key_but(e2e_p99_s=lambda r, s, a: float(np.mean(
                            [x.token_times_s[-1] - x.start_s for x in r]))), "e2e_p99_s"),
            WrongAnswer("queue depth of the last scrape", "the queue has drained by the last "
                        "scrape: the peak during the incident is what explains the wait",
                        lambda: _key_but(peak_queue_depth=lambda r, s, a: s[-1][obs.WAITING_METRIC]),
                        "peak_queue_depth"),
            WrongAnswer("always queueing", "names the cause of the one incident it has seen "
                        "whatever the data says", lambda: _key_but(
                            cause=lambda r, s, a: "queueing for batch slots",
                            metric=lambda r, s, a: obs.WAITING_METRIC),
                        "diagnosis of an unseen incident"),
            WrongAnswer("hard-coded numbers", "the incident's numbers copied in: right once, "
                        "wrong on any other incident", _hard_coded,
                        "numbers on an unseen incident"),
            WrongAnswer("average of per-window p99s", "percentiles do not average",
                        lambda: _key_but(ttft_p99_s=_p99_of_window_p99s), "ttft_p99_s"),
            WrongAnswer("quantiles from the mean", "the p99 is not a multiple of the mean",
                        lambda: _key_but(ttft_p99_s=lambda r, s, a: 2.33 * float(np.mean(
                            [x.token_times_s[0] - x.start_s for x in r]))), "ttft_p99_s"),
            WrongAnswer("CPU-based diagnosis", "CPU measures the host process, not the batch",
                        _cpu_diagnosis, "diagnosis of the incident"),
            WrongAnswer("the cause right, the metric wrong", "TTFT shows that users wait, "
                        "not why", lambda: _key_but(metric=lambda r, s, a: obs.TTFT_METRIC),
                        "diagnosis of the incident"),
        ],
    ),
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz",
        check=lambda a: checks.check_quiz(a),
        answer_key=lambda: dict(key.QUIZ_ANSWERS),
        gallery=[
            WrongAnswer("unanswered", "the starter answers nothing", lambda: {}, "average-p99"),
            WrongAnswer("average the p99s", "percentiles do not average",
                        lambda: {**key.QUIZ_ANSWERS, "average-p99": 0}, "average-p99"),
            WrongAnswer("λ alone", "12 is the arrival rate, not the queue",
                        lambda: {**key.QUIZ_ANSWERS, "little": 12.0}, "little"),
        ],
    ),
]
