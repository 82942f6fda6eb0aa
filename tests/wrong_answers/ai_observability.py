"""Wrong answers to notebook 06's scenario exercise ("the assistant feels slow").

Each is a ``diagnose(records, scrapes) -> dict`` a learner could plausibly write; the
checker must tell every one "not yet", with the named row failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport.checks import ai_observability as checks
from labsupport.solutions import ai_observability as key

from . import Exercise, WrongAnswer

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


EXERCISES = [
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
        ],
    ),
]
