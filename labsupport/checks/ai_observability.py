"""The scenario checker of notebook 06: "the assistant feels slow; CPU is at 30%".

Backs ``notebooks/06_ai_observability.ipynb`` (the mechanism is
``labsupport/ai_observability.py``). The learner's ``diagnose(records, scrapes) -> dict``
is judged on the incident the notebook replays over HTTP (or its offline replay), then
on unseen incidents simulated offline with known causes. Every incident is judged on
its own: one that makes the learner's code raise fails only its own rows, and each
failed row names the incident and a line that reproduces it in a notebook cell.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import quiz as qz
from labsupport.ai_observability import (
    DURATION_METRIC,
    PROMPT_METRIC,
    RUNNING_METRIC,
    TOKENS_METRIC,
    TPOT_METRIC,
    TTFT_METRIC,
    WAITING_METRIC,
    EngineConfig,
    RequestRecord,
    capacity_estimate,
    make_workload,
    simulate,
    summarize,
)
from labsupport.checks import ai_observability_steps as steps
from labsupport.services.ai_observability import (
    INCIDENT_CONFIG,
    INCIDENT_SEED,
    Incident,
    incident_workload,
    scrapes_from_simulation,
)

EXERCISE_ID = "06_ai_observability"

CAUSES = ("queueing for batch slots", "slow decode", "long prompts")
METRIC_NAMES = (TTFT_METRIC, TPOT_METRIC, DURATION_METRIC, PROMPT_METRIC, WAITING_METRIC,
                RUNNING_METRIC, TOKENS_METRIC, "cpu_percent")
# Which metric shows each cause (each is shown as a small incident in the notebook first).
EVIDENCE = {"queueing for batch slots": WAITING_METRIC, "slow decode": TPOT_METRIC,
            "long prompts": PROMPT_METRIC}
ANSWER_KEYS = ("ttft_p50_s", "ttft_p99_s", "tokens_per_s", "e2e_p99_s", "peak_queue_depth",
               "cause", "metric")

# The unseen incidents: (cause, seed). One of the same kind as the notebook's (6 slots,
# another seed) for the numbers, three with other causes for the diagnosis.
UNSEEN_NUMBERS = ("queueing for batch slots", 11)
UNSEEN_CAUSES = (("slow decode", 12), ("long prompts", 13), ("queueing for batch slots", 14))


# --- the incidents --------------------------------------------------------------------


def offline_replay(seed: int = INCIDENT_SEED) -> Incident:
    """The notebook's incident simulated offline (what :func:`check_exercise` judges when
    it is not handed the HTTP replay)."""
    sim = simulate(incident_workload(seed), INCIDENT_CONFIG)
    return Incident(sim.records, scrapes_from_simulation(sim, 1.0), "offline replay")


def offline_incident(kind: str, seed: int) -> Incident:
    """An incident simulated offline with the known cause ``kind`` (one of CAUSES); its
    ``description`` is that cause. The checker's unseen cases."""
    base = EngineConfig()
    if kind == "queueing for batch slots":
        config, load, prompt, delay = replace(base, slots=6), 1.35, 400.0, 0.0
    elif kind == "slow decode":  # an iteration costs 8x: e.g. a throttled accelerator
        config, load, prompt, delay = replace(base, step_overhead_s=0.064, decode_s_per_seq=0.008), 0.35, 400.0, 0.0
    elif kind == "long prompts":  # pasted documents: prompts of ~6,000 tokens
        config, load, prompt, delay = base, 0.3, 6000.0, 0.0
    else:
        raise ValueError(kind)
    rate = load * capacity_estimate(config, prompt)
    sim = simulate(make_workload(rate, 40.0, seed, prompt_mean=prompt), config,
                   network_delay_s=delay)
    return Incident(sim.records, scrapes_from_simulation(sim, 1.0), kind)


def incident_truth(incident: Incident) -> dict[str, float]:
    """The numbers an answer must reproduce."""
    s = summarize(incident.records)
    return {"ttft_p50_s": s["ttft_p50_s"], "ttft_p99_s": s["ttft_p99_s"],
            "tokens_per_s": s["tokens_per_s"], "e2e_p99_s": s["e2e_p99_s"],
            "peak_queue_depth": max(x[WAITING_METRIC] for x in incident.scrapes)}


def _inputs(incident: Incident) -> tuple[list[RequestRecord], list[dict[str, Any]]]:
    """Copies for the learner's function: what it changes cannot change the truth."""
    return copy.deepcopy(incident.records), copy.deepcopy(incident.scrapes)


def _reproduce(kind: str, seed: int) -> str:
    return (f"inc = checks.offline_incident({kind!r}, seed={seed}); "
            "my_answer(inc.records, inc.scrapes)")


# --- the rows -------------------------------------------------------------------------

TOLERANCE = {"ttft_p50_s": 0.05, "ttft_p99_s": 0.05, "tokens_per_s": 0.05, "e2e_p99_s": 0.05,
             "peak_queue_depth": 0.10}  # relative; the queue also accepts +-2 requests
_UNITS = {"ttft_p50_s": "s", "ttft_p99_s": "s", "tokens_per_s": "tokens/s", "e2e_p99_s": "s",
          "peak_queue_depth": "requests"}


def _number_ok(key: str, value: Any, truth: float) -> tuple[bool, str]:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False, f"{type(value).__name__} {value!r:.40}"
    value = float(value)
    if math.isnan(value):
        return False, "NaN"
    slack = TOLERANCE[key] * abs(truth) + (2.0 if key == "peak_queue_depth" else 0.0)
    error = (value - truth) / truth if truth else math.inf
    return abs(value - truth) <= slack, f"{value:.3g} {_UNITS[key]} ({error:+.0%})"


_HINTS = {
    "ttft_p50_s": "TTFT is each record's first token time minus its start; take the median.",
    "ttft_p99_s": "The exact p99 of the raw TTFTs (numpy.percentile). From the histogram, "
                  "a p99 beyond 10 s lands in the +Inf bucket and reads as 10 s.",
    "tokens_per_s": "All output tokens divided by (last token time - first start).",
    "e2e_p99_s": "E2E is last token minus start; take the 99th percentile, not the mean.",
    "peak_queue_depth": f"The largest value of the {WAITING_METRIC} gauge across the scrapes.",
}


def incident_rows(answer: Callable[..., Any], incident: Incident) -> list[ex.Check]:
    """The rows of the incident you were handed: five numbers and the diagnosis, all
    from one call of ``answer``."""
    result = answer(*_inputs(incident))
    if not isinstance(result, dict):
        return [ex.Check("diagnose returns a dict", False, "a dict with keys " + ", ".join(ANSWER_KEYS),
                         f"{type(result).__name__} {result!r:.60}")]
    checks: list[ex.Check] = []
    truth = incident_truth(incident)
    for key, true_value in truth.items():
        if key not in result:
            checks.append(ex.Check(key, False, f"{true_value:.3g} {_UNITS[key]}",
                                   f"missing (your keys: {sorted(result)[:6]})", _HINTS[key]))
            continue
        ok, found = _number_ok(key, result[key], true_value)
        tol = f"±{TOLERANCE[key]:.0%}" + (" or ±2" if key == "peak_queue_depth" else "")
        checks.append(ex.Check(key, ok, f"{true_value:.3g} {_UNITS[key]} ({tol})", found,
                               _HINTS[key]))
    cause, metric = result.get("cause"), result.get("metric")
    right = (type(cause) is str and cause == "queueing for batch slots"  # strict: a str
             and type(metric) is str and metric == EVIDENCE["queueing for batch slots"])
    checks.append(ex.Check(
        "diagnosis of the incident", right,
        "cause and the metric that shows it (one of checks.CAUSES, checks.METRIC_NAMES)",
        f"cause={cause!r}, metric={metric!r}",
        "TTFT grows while tokens/s and CPU stay flat: where do requests spend that time?"))
    return checks


def unseen_numbers_row(answer: Callable[..., Any], kind: str, seed: int) -> ex.Check:
    """An unseen replay of the same kind of incident: the numbers must follow the data."""
    unseen = offline_incident(kind, seed)
    other = answer(*_inputs(unseen))
    off = []
    for key, true_value in incident_truth(unseen).items():
        ok, found = _number_ok(key, other.get(key) if isinstance(other, dict) else None, true_value)
        if not ok:
            off.append(f"{key} {found} vs {true_value:.3g}")
    return ex.Check("numbers on an unseen incident (6 slots, other seed)", not off,
                    "all five within tolerance", "; ".join(off) or "all five within tolerance",
                    "Compute every number from the records and scrapes you are given.")


def unseen_diagnosis_row(answer: Callable[..., Any], kind: str, seed: int) -> ex.Check:
    """An unseen incident with a known cause: the diagnosis must follow the evidence."""
    got = answer(*_inputs(offline_incident(kind, seed)))
    got_cause = got.get("cause") if isinstance(got, dict) else None
    got_metric = got.get("metric") if isinstance(got, dict) else None
    right = (type(got_cause) is str and got_cause == kind and type(got_metric) is str
             and got_metric == EVIDENCE[kind])
    return ex.Check(f"diagnosis of an unseen incident ({kind})", right,
                    "the cause, decided from the data, and the metric that shows it",
                    f"cause={got_cause!r}, metric={got_metric!r}",
                    "Decide from the data: queue depth, TPOT and prompt sizes; CPU says "
                    "nothing.")


def _judge_one_run(name: str, run: Callable[[], list[ex.Check]], *, case: str,
                   reproduce: str) -> list[ex.Check]:
    """Rows that come from one call of the learner's function: each failed one names the
    case; if the call raises, one failed row ``name`` says so instead."""
    rows: list[ex.Check] = []

    def once() -> ex.Check:
        rows.extend(run())
        return ex.Check(name, True, "no exception", "ran")

    ran = ex.judge(name, once, case=case, reproduce=reproduce)
    if not ran.passed:
        return [ran]
    return [ex.locate(row, case=case, reproduce=reproduce) for row in rows]


def _checks(answer: Any, incident: Incident, case: str, reproduce: str) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "your diagnose function")
    if bad:
        return [bad]
    checks = _judge_one_run("diagnose runs on the incident",
                            lambda: incident_rows(answer, incident),
                            case=case, reproduce=reproduce)
    same_kind, other_seed = UNSEEN_NUMBERS
    checks.append(ex.judge("numbers on an unseen incident (6 slots, other seed)",
                           lambda: unseen_numbers_row(answer, same_kind, other_seed),
                           case=f"unseen incident: {same_kind}, 6 slots, seed {other_seed}",
                           reproduce=_reproduce(same_kind, other_seed)))
    for kind, seed in UNSEEN_CAUSES:
        checks.append(ex.judge(f"diagnosis of an unseen incident ({kind})",
                               lambda kind=kind, seed=seed: unseen_diagnosis_row(answer, kind, seed),
                               case=f"unseen incident: {kind}, seed {seed}",
                               reproduce=_reproduce(kind, seed)))
    return checks


def check_exercise(answer: Callable[..., dict], incident: Incident | None = None, *,
                   solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's ``diagnose(records, scrapes) -> dict`` on the incident of
    notebook 06 (replayed offline when ``incident`` is None) and on unseen incidents."""
    if incident is None:
        incident = offline_replay()
        case = f"the notebook's incident, replayed offline (seed {INCIDENT_SEED})"
        reproduce = "inc = checks.offline_replay(); my_answer(inc.records, inc.scrapes)"
    else:
        case = f"the incident you were handed ({incident.description})"
        reproduce = "my_answer(incident.records, incident.scrapes)"
    return ex.run_checks(EXERCISE_ID, lambda a: _checks(a, incident, case, reproduce), answer,
                         solution_mode=solution_mode)



# --- the steps and the review quiz ---------------------------------------------------------

snapshot = steps.snapshot  # what a dashboard shows of an incident (step 4's input)

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: one request's metrics, 2: histogram_quantile,
    3: queue depth by Little's law, 4: the cause from a snapshot)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


QUIZ = qz.Quiz(EXERCISE_ID, {
    "average-p99": qz.Choice(
        "Two servers report their p99 latency every minute: A 120 ms, B 900 ms. What is the "
        "fleet's p99?",
        ("510 ms, their average", "900 ms, the larger one",
         "It cannot be computed from these two numbers: sum the servers' histogram buckets "
         "(or pool the samples) and take the p99 of that",
         "120 ms, the one with more traffic"),
        2, "A percentile of a union is not a function of the parts' percentiles: it depends on "
           "how many requests each served and on their whole distributions. Histograms with the "
           "same buckets add up (sum by le), and histogram_quantile of the sum is the fleet's."),
    "inf-bucket": qz.Choice(
        "TTFT buckets end at le=10 (then +Inf). During an overload every request waits 30 s. "
        "What does histogram_quantile(0.99, …) report?",
        ("30 s", "+Inf", "10 s: a rank in the +Inf bucket returns the highest finite bound",
         "NaN"),
        2, "All Prometheus knows is 'above 10 s', so it returns 10. Put the top bucket above "
           "any latency you need to see (vLLM's TTFT buckets go to 2,560 s), or read the tail "
           "from raw samples."),
    "little": qz.Numeric(
        "Requests arrive at 12 per second and each waits on average 2.5 s for a batch slot. "
        "How many requests wait in the queue on average?",
        30.0, 0.5, "requests",
        "Little's law, L = λ · W = 12/s × 2.5 s = 30. It holds for any queue in a steady "
        "state, whatever the distributions: a quick check of a queue-depth gauge."),
    "ttft-vs-tpot": qz.Choice(
        "Requests queue for batch slots. Which metric grows, and which stays flat?",
        ("TPOT grows, TTFT stays flat", "TTFT grows (it includes the wait); TPOT stays about "
         "the same (the batch was already full)", "Both grow as much", "Neither: only CPU grows"),
        1, "TTFT = queue wait + prefill: the wait is where the time goes. Once a request has a "
           "slot it decodes at the batch's pace, which a full batch already had."),
    "cpu-30": qz.Choice(
        "An LLM server shows CPU at 30%, no errors, and users wait 20 s for a first token. "
        "Where do you look first?",
        ("Nothing is wrong: CPU is low", "The queue-depth gauge (requests waiting for a batch "
         "slot) and TTFT's tail", "The error rate", "Memory"),
        1, "CPU measures the host process, not the accelerator's batch slots. A saturated "
           "batch queues requests while the host idles: queue depth and TTFT p99 show it."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)
