"""Checks of notebook 08_capstone_ai_assistant: the seven game-day incidents, the final check
and the review quiz.

An incident's answer is ``{"fault": name, "fix": {setting: value}}``. The name is judged
against the fault the game day injected; the fix is applied to the settings running during
the incident, and the incident's own evidence is measured again (the same numbers an
operator read), on the notebook's day and on an unseen day. The final check takes the
learner's hardened settings and runs all seven faults at once, with details drawn by the
checker, judging every invariant (no double charge, no lost job, no cross-tenant document,
p99 within budget, cost within 15% of the routing oracle, ...). Every number comes from a
simulator or a count (``capstone_gameday``), so verdicts do not depend on the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from labsupport import capstone as cap
from labsupport import exercises as ex
from labsupport import quiz as qz
from labsupport.checks import capstone_gameday as gd

EXERCISE_ID = "08_capstone_ai_assistant"

# The order the game day injects the faults in (the notebook's incidents 1 to 7): not the
# order of the notebooks, so the name has to come from the evidence.
INCIDENT_ORDER = ("upload burst", "lost response", "queueing for batch slots",
                  "tenant filter missing", "slow replica", "chunks cut mid-sentence",
                  "everything to the large model")
DAY_SEED = 0  # the notebook's incidents
UNSEEN_DAY_SEED = 1  # the same fault on another day: other details, same invariants
FINAL_SEEDS = {fault: 100 + i for i, fault in enumerate(cap.FAULTS)}  # the final check's day

# Where the evidence of each fault shows (the hint of a wrongly named incident).
WHERE_IT_SHOWS = {
    "lost response": "charges per question in the billing ledger",
    "slow replica": "p99 and share per replica",
    "upload burst": "rejected uploads and jobs lost",
    "everything to the large model": "cost per day against the oracle, share to the large model",
    "chunks cut mid-sentence": "recall on the gold questions, chunks ending mid-sentence",
    "queueing for batch slots": "queue depth and TTFT with CPU low and no errors",
    "tenant filter missing": "cross-tenant results per read path",
}


def incident(n: int) -> gd.Incident:
    """Incident ``n`` (1 to 7) of the notebook's game day."""
    return gd.incident(INCIDENT_ORDER[n - 1], DAY_SEED)


def _value(evidence: gd.Evidence, metric: str | tuple[str, ...]) -> str:
    if isinstance(metric, tuple):
        return ", ".join(_value(evidence, m) for m in metric)
    v = evidence.get(metric)
    return f"{metric} = {v:.3g}" if isinstance(v, float) else f"{metric} = {v}"


def invariant_rows(fault: str, settings: cap.Settings, env: dict[str, Any], *,
                   day: str, reproduce: str) -> Iterator[ex.Check]:
    """One row per invariant of ``fault``, measured with ``settings`` in ``env``."""
    evidence: dict[str, Any] = {}

    def measure() -> ex.Check:
        evidence.update(gd.EVIDENCE[fault](settings, env))
        return ex.Check(f"measure {fault} ({day})", True, "runs", "ran")

    ran = ex.judge(f"measure {fault} ({day})", measure, case=day, reproduce=reproduce)
    if not ran.passed:
        yield ran
        return
    for inv in gd.INVARIANTS[fault]:
        ok = inv.holds(evidence)
        yield ex.Check(f"{inv.name} ({day})", ok, inv.expected, _value(evidence, inv.metric),
                       hint="" if ok else "Measured with your settings; the evidence: "
                       + ", ".join(_value(evidence, k) for k, v in evidence.items()
                                   if k != "logs" and not isinstance(v, list))[:400])


def _fixed_settings(base: cap.Settings, fix: Any) -> tuple[cap.Settings | None, ex.Check]:
    try:
        settings = base.with_changes(fix)
    except (ValueError, TypeError) as exc:
        return None, ex.Check("the fix is a change of settings", False,
                              "a dict of setting -> value, e.g. {'replicas': 4}", str(exc)[:300])
    return settings, ex.Check("the fix is a change of settings", True, "valid settings",
                              f"{fix}" if fix else "{} (no change)")


def _step_checks(n: int, answer: Any) -> Iterator[ex.Check]:
    truth = INCIDENT_ORDER[n - 1]
    bad = ex.expect_type(answer, dict, "your answer")
    if bad:
        yield bad
        return
    missing = [k for k in ("fault", "fix") if k not in answer]
    if missing:
        yield ex.Check("the answer has a fault and a fix", False, "keys 'fault' and 'fix'",
                       f"keys {sorted(answer)}", hint='{"fault": "...", "fix": {...}}')
        return
    name = answer["fault"]
    known = type(name) is str and name in cap.FAULTS
    yield ex.Check("the fault is named", known and name == truth,
                   "the fault the evidence points to (one of cap.FAULTS)",
                   repr(name) if known else f"{name!r} is not one of {list(cap.FAULTS)}",
                   hint="" if name == truth else "Read the evidence table again: which metric is "
                   "far from normal, and which part of the system produces it?")
    inc = incident(n)
    settings, row = _fixed_settings(inc.settings, answer["fix"])
    yield row
    if settings is None:
        return
    yield from invariant_rows(truth, settings, inc.environment, day="the notebook's incident",
                              reproduce=f"checks.measure({n}, my_incident_{n}['fix'])")
    other = gd.incident(truth, UNSEEN_DAY_SEED)
    yield from invariant_rows(truth, settings, other.environment, day="another day",
                              reproduce=f"checks.measure({n}, my_incident_{n}['fix'], "
                              f"seed={UNSEEN_DAY_SEED})")


def measure(n: int, fix: dict[str, Any] | None = None, seed: int = DAY_SEED) -> gd.Evidence:
    """The evidence of incident ``n`` with ``fix`` applied (None: as it happened)."""
    inc = gd.incident(INCIDENT_ORDER[n - 1], seed)
    return gd.EVIDENCE[inc.fault](inc.settings.with_changes(fix or {}), inc.environment)


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check incident ``n`` (1 to 7): ``{"fault": name, "fix": {setting: value}}``."""
    if type(n) is not int or not 1 <= n <= len(INCIDENT_ORDER):
        raise ValueError(f"incidents are numbered 1 to {len(INCIDENT_ORDER)}")
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), lambda a: _step_checks(n, a), answer,
                         solution_mode=solution_mode)


# --- the final check ---------------------------------------------------------------------


def _final_checks(answer: Any) -> Iterator[ex.Check]:
    bad = ex.expect_type(answer, dict, "your settings (a dict of changes to cap.SHIPPED)")
    if bad:
        yield bad
        return
    settings, row = _fixed_settings(cap.SHIPPED, answer)
    yield ex.Check("your settings are valid", row.passed, row.expected, row.found)
    if settings is None:
        return
    for fault, seed in FINAL_SEEDS.items():
        env = {**gd.incident(fault, seed).environment, "resample": True}
        yield from invariant_rows(fault, settings, env, day=f"{fault}, at random",
                                  reproduce=f"checks.final_evidence({fault!r}, my_settings)")


def final_evidence(fault: str, changes: dict[str, Any]) -> gd.Evidence:
    """What the final check measured for ``fault`` with your settings."""
    env = {**gd.incident(fault, FINAL_SEEDS[fault]).environment, "resample": True}
    return gd.EVIDENCE[fault](cap.SHIPPED.with_changes(changes), env)


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """The final check: your settings (changes to ``cap.SHIPPED``) under every fault at once."""
    return ex.run_checks(EXERCISE_ID, _final_checks, answer, solution_mode=solution_mode)


# --- the review quiz ------------------------------------------------------------------------

QUIZ = qz.Quiz(EXERCISE_ID, {
    "retry-key": qz.Choice(
        "A client times out on POST /v1/ask after the gateway billed the answer, and retries. "
        "What keeps the client from being billed twice?",
        ("A longer client timeout", "No retries on POST",
         "The same Idempotency-Key on the retry, claimed by the gateway before it bills; the "
         "retry gets the stored reply", "A unique request id generated on each attempt"),
        2, "The response was lost, not slow: a longer timeout still loses it, and no retries "
           "leaves the user without an answer. A key that changes per attempt is no key. The "
           "claim and the charge must be one transaction (notebook 01)."),
    "slow-replica": qz.Choice(
        "At noon traffic triples and one of three replicas answers 10x slower; its health "
        "check passes. p99 is over a thousand times the 9am value. Which change brings it back within budget?",
        ("Raise the client timeout", "Add a fourth replica behind the same round-robin",
         "Least-connections with latency-based outlier ejection (one host may be ejected)",
         "Retry every request twice"),
        2, "Round-robin keeps sending the slow replica its third; a fourth replica still gets "
           "a quarter of it. Least-connections sends it less, and ejection takes it out until "
           "it recovers. With three hosts Envoy's 10% cap ejects nobody unless "
           "always_eject_one_host is set (notebook 02)."),
    "drain-time": qz.Numeric(
        "500 uploads arrive at once; the processor handles 20 at a time, 0.25 s each. With a "
        "queue and 20 workers, how long does the best schedule take to process all of them?",
        6.25, 0.01, "s",
        "ceil(500 / 20) x 0.25 s = 25 x 0.25 s = 6.25 s. Without the queue, 480 of them get "
        "503 at once and are lost (notebook 03)."),
    "replicas": qz.Numeric(
        "Questions arrive at 19.5 per second; one replica serves 5 per second at full "
        "batches. How many replicas keep each below 80% utilisation?",
        5, 0.0, "replicas",
        "19.5 / (0.8 x 5) = 4.9, so 5. At 4 replicas utilisation is 98%: queues and TTFT "
        "explode on busier minutes while CPU stays low (notebook 06)."),
    "tenant-path": qz.Choice(
        "One read path of a shared collection forgets the tenant filter. Which fix keeps every "
        "query at k results and never returns another client's document?",
        ("Filter out other clients' hits after the top-k search",
         "Route every read through the store bound to the client, which puts the tenant in "
         "the query's where clause", "Lower k", "Give each client a random id prefix"),
        1, "Filtering after the top k returns fewer than k results (sometimes none) and still "
           "reads the other client's data; the filter belongs in the query, behind an API that "
           "cannot be called without the tenant (notebook 07)."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)
