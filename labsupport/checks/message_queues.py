"""Checks for ``03_message_queues.ipynb``: the scenario exercise (500 uploads at 2pm, a
processing service that handles 20 at a time).

:func:`check_exercise` sends the uploads over HTTP to the front door, runs the learner's
:class:`~labsupport.services.message_queues.PipelineConfig` with injected faults (workers
that crash before the effect, workers that crash after it and before the delete, and
poison documents), and judges acceptance, exactly-once effects, the dead-letter queue,
the accounting and the drain time against the ideal ``ceil(500 / 20) × 0.25 s``. All
rows come from that one shared run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import message_queues as mq
from labsupport.message_queues import SQS_VISIBILITY_TIMEOUT_MAX, Document
from labsupport.services.message_queues import (
    FaultPlan,
    PipelineConfig,
    RunResult,
    make_documents,
    run_pipeline,
)

EXERCISE_ID = "03_message_queues"
EXERCISE_PROCESSING_TIME = 0.25  # seconds per document in the exercise (the demos use 0.05 s)


@dataclass(frozen=True)
class Scenario:
    """2pm: 500 users upload at once; the processing service handles 20 at a time."""

    uploads: int = 500
    capacity: int = 20  # concurrent documents the processing service handles
    processing_time: float = EXERCISE_PROCESSING_TIME  # seconds per document (scaled down from minutes)
    crashes: int = 3  # workers that die mid-job, before the effect
    crashes_after_effect: int = 12  # workers that die after the effect is committed, before the delete
    poison: int = 2  # documents that always fail
    accept_p99_bound: float = 2.0  # seconds, for the 202 answer
    drain_tolerance: float = 0.25  # drain within 25% of the ideal
    seed: int = 3

    @property
    def ideal_drain(self) -> float:
        return math.ceil(self.uploads / self.capacity) * self.processing_time

    @property
    def deadline(self) -> float:
        """Seconds the checker lets the pipeline run before it stops waiting for a drain."""
        return (1 + self.drain_tolerance) * self.ideal_drain + 1.0


SCENARIO = Scenario()


def _scenario_docs(sc: Scenario) -> tuple[list[Document], set[str], set[str]]:
    rng = np.random.default_rng(sc.seed)
    # Poison in the first half and crashes in the first three quarters, so a good
    # configuration can finish its retries within the drain bound.
    picks = rng.choice(np.arange(20, sc.uploads // 2), size=sc.poison, replace=False)
    poison = {int(i) for i in picks}
    crash_pool = [i for i in range(20, 3 * sc.uploads // 4) if i not in poison]
    crashes = {int(i) for i in rng.choice(crash_pool, size=sc.crashes, replace=False)}
    docs = make_documents(sc.uploads, poison, prefix="upload")
    return docs, {docs[i].name for i in poison}, {docs[i].name for i in crashes}


def _scenario_faults(sc: Scenario, docs: list[Document], poison: set[str],
                     crashes: set[str]) -> FaultPlan:
    """The injected crashes: ``crashes`` before the effect, and ``sc.crashes_after_effect``
    other documents whose worker dies after the effect is committed and before the
    delete (the first three quarters again, fixed by the seed)."""
    rng = np.random.default_rng([sc.seed, 1])  # its own stream: the draws above stay put
    pool = [d.name for d in docs[20:3 * sc.uploads // 4] if d.name not in poison | crashes]
    after = {str(n) for n in rng.choice(pool, size=sc.crashes_after_effect, replace=False)}
    return FaultPlan(crash_on=set(crashes), crash_after_effect_on=after)


def _effects_check(sc: Scenario, config: PipelineConfig, run: RunResult,
                   good_jobs: list[str], after_effect_jobs: set[str]) -> ex.Check:
    """Row: every good document has exactly one effect."""
    counts = [run.effects.get(j, 0) for j in good_jobs]
    once, missing = counts.count(1), counts.count(0)
    dup = sum(1 for c in counts if c > 1)
    extra = sum(c - 1 for c in counts if c > 1)
    vt, pt = config.visibility_timeout, sc.processing_time
    hints = []
    if dup:
        after = sum(1 for j in after_effect_jobs if run.effects.get(j, 0) > 1)
        if after:
            hints.append(
                f"{after} of the {dup} {'is a document' if after == 1 else 'are documents'} "
                f"whose worker crashed after the effect was "
                "committed and before the delete: the message came back and your handler "
                "applied the effect again. Make the effect idempotent: in one "
                "store.transaction(), record it only when tx.mark_processed(doc.doc_id) "
                "returns True.")
        if vt <= pt:
            hints.append(
                f"Your visibility timeout ({vt:g} s) is not above the processing time "
                f"({pt:g} s): a message reappears while its first worker is still busy, and "
                "a second worker processes it too.")
        elif dup > after:
            hints.append(
                f"{dup - after} were delivered again while their first worker was still busy: "
                f"a visibility timeout of {vt:g} s leaves little margin over the {pt:g} s of "
                "processing, and your handler applied the effect on each delivery.")
    if missing:
        dead = set(run.dead_lettered)
        no_effect = [j for j, c in zip(good_jobs, counts, strict=True) if c == 0]
        not_accepted = sum(1 for j in no_effect if j.startswith("not accepted"))
        queued = [j for j in no_effect if j in run.queued]
        in_dlq = sum(1 for j in no_effect if j in dead)
        if not_accepted:
            hints.append(f"{not_accepted} uploads were not accepted (see that row), so they "
                         "never became jobs.")
        if queued:
            received = sum(1 for j in queued if run.queued[j] > 0)
            details = []
            if received:
                details.append(
                    f"{received} had been received by a worker that crashed or failed, and a "
                    f"message comes back only a full visibility timeout ({vt:g} s) after its "
                    "receive")
            if received < len(queued):
                details.append(
                    f"{len(queued) - received} were never received: the workers were busy "
                    + ("processing documents again whose visibility timeout ran out "
                       "mid-processing" if vt <= pt else "with the documents before them"))
            hints.append(f"{len(queued)} documents were still in the queue, never processed, "
                         f"when the check stopped at {sc.deadline:.1f} s: "
                         + "; ".join(details) + ".")
            if received and vt > sc.deadline - sc.ideal_drain:
                hints.append(f"Keep the visibility timeout above the processing time ({pt:g} s) "
                             "but well inside the drain budget.")
        if in_dlq:
            hints.append(
                f"{in_dlq} good documents went to the dead-letter queue: with "
                f"max_receive_count = {config.max_receive_count}, a crash (or a redelivery) "
                "used up their receives. Allow a retry: 2 or more.")
        if missing > not_accepted + len(queued) + in_dlq:
            hints.append("Some messages were deleted without an effect: let exceptions from "
                         "the service propagate instead of catching them, so the message "
                         "stays in the queue for a retry.")
    return ex.Check(
        "every good document processed exactly once (in effect)",
        once == len(good_jobs) == sc.uploads - sc.poison,
        f"{sc.uploads - sc.poison} documents with exactly 1 effect",
        f"{once} exactly once; {dup} processed more than once ({extra} extra effects); "
        f"{missing} never processed",
        hint=" ".join(hints))


def _dlq_check(sc: Scenario, config: PipelineConfig, run: RunResult,
               poison_names: set[str], job_of: dict[str, str]) -> ex.Check:
    """Row: both poison documents end in the dead-letter queue."""
    poison_jobs = {job_of[n] for n in poison_names if n in job_of}
    in_dlq = poison_jobs & set(run.dead_lettered)
    still = sorted(run.queued[j] for j in poison_jobs if j in run.queued)
    found = f"{len(in_dlq)} in the DLQ ({len(run.dead_lettered)} messages there in all)"
    if still:
        found += (f"; {len(still)} still in the main queue after "
                  f"{' and '.join(map(str, still))} receives")
    mrc, vt = config.max_receive_count, config.visibility_timeout
    if mrc is None:
        hint = ("Without max_receive_count there is no dead-letter queue: a poison document "
                "is retried for ever.")
    elif still:
        needed = mrc * vt  # seconds: one visibility timeout per failed receive
        late = (f", longer than the {sc.deadline:.1f} s the check waits"
                if needed > sc.deadline else "")
        hint = (f"max_receive_count = {mrc} is set, but a poison document moves to the DLQ "
                f"only after {mrc} failed receives, and each failure waits a full visibility "
                f"timeout ({vt:g} s) before the next receive: about {mrc} × {vt:g} s = "
                f"{needed:g} s{late}. Shorten the visibility timeout"
                + (" or lower max_receive_count." if mrc > 5 else "."))
    elif len(poison_jobs) < sc.poison:
        hint = "Some poison uploads were not accepted (see that row), so they never got queued."
    else:
        hint = ("The poison documents' messages were deleted: a handler that catches the "
                "service's exception and returns acknowledges the message. Let the exception "
                "propagate, so the message is retried and then dead-lettered.")
    return ex.Check("both poison documents in the DLQ", len(in_dlq) == sc.poison,
                    f"{sc.poison} in the dead-letter queue", found, hint=hint)


def _drain_check(sc: Scenario, config: PipelineConfig, run: RunResult,
                 poison_left: int) -> ex.Check:
    """Row: the queue empties within the tolerance of the ideal drain time."""
    ideal = sc.ideal_drain
    bound = ideal * (1 + sc.drain_tolerance)
    drained = run.drained_at
    vt, pt = config.visibility_timeout, sc.processing_time
    reasons = []
    if config.workers < sc.capacity:
        own = math.ceil(sc.uploads / config.workers) * pt
        reasons.append(f"With {config.workers} workers the best possible drain is "
                       f"ceil({sc.uploads}/{config.workers}) × {pt:g} s = {own:.2f} s; the "
                       f"service takes {sc.capacity} at a time.")
    if vt <= pt:
        reasons.append(f"The visibility timeout ({vt:g} s) is not above the processing time "
                       f"({pt:g} s): messages come back while still being processed, so "
                       f"workers repeat work ({run.stats.stale_deletes} deletes refused: stale "
                       "receipt handle).")
    if config.max_receive_count is None and poison_left:
        reasons.append("Without max_receive_count the poison documents come back for ever: "
                       "the queue never empties.")
    elif poison_left:
        reasons.append(f"{poison_left} poison document(s) were still being retried: the queue "
                       f"empties only after max_receive_count ({config.max_receive_count}) "
                       f"failed receives, one visibility timeout ({vt:g} s) apart.")
    if vt > pt and (not reasons or vt > bound - ideal):
        reasons.append(f"A crashed worker's message waits a full visibility timeout ({vt:g} s) "
                       "before anyone retries it: keep the timeout above the processing time, "
                       "but not far above.")
    return ex.Check(
        "drain time near the ideal", drained is not None and drained <= bound,
        f"≤ {bound:.2f} s (ideal ceil({sc.uploads}/{sc.capacity}) × {pt:g} s "
        f"= {ideal:.2f} s, +{sc.drain_tolerance:.0%})",
        (f"{drained:.2f} s ({drained / ideal:.2f}× ideal)" if drained is not None else
         f"not drained after {sc.deadline:.1f} s: {run.left_in_queue} messages left, "
         f"{run.stats.stale_deletes} deletes refused (stale receipt handle)"),
        hint=" ".join(reasons))


def _checks(answer: Any, sc: Scenario = SCENARIO) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "my_pipeline")
    if bad:
        return [bad]
    config = answer()
    bad = ex.expect_type(config, PipelineConfig, "my_pipeline()")
    if bad:
        return [bad]
    checks = []
    workers_ok = isinstance(config.workers, int) and 1 <= config.workers <= sc.capacity
    checks.append(ex.Check(
        "workers within capacity", workers_ok, f"1 to {sc.capacity} workers",
        f"{config.workers!r} workers",
        hint=f"The processing service handles {sc.capacity} at a time; more workers only get "
             "'overloaded' errors."))
    try:
        mq._check_range("visibility_timeout", config.visibility_timeout, 0,
                     SQS_VISIBILITY_TIMEOUT_MAX)
        vt_valid = True
    except (ValueError, TypeError) as exc:
        vt_valid = False
        checks.append(ex.Check("visibility timeout is valid", False, "0 to 43200 s",
                               f"{config.visibility_timeout!r}: {exc}"))
    mrc = config.max_receive_count
    if mrc is not None and not (isinstance(mrc, int) and 1 <= mrc <= 1000):
        checks.append(ex.Check("max_receive_count is valid", False, "None or 1 to 1000",
                               repr(mrc)))
        return checks
    if not vt_valid or not workers_ok:
        return checks
    docs, poison_names, crash_names = _scenario_docs(sc)
    faults = _scenario_faults(sc, docs, poison_names, crash_names)
    run = run_pipeline(config, docs, processing_time=sc.processing_time, capacity=sc.capacity,
                       faults=faults, via_http=True, deadline=sc.deadline)
    acc = run.accept
    assert acc is not None
    p99 = acc.p99("accepted")
    n_acc = acc.count("accepted")
    checks.append(ex.Check(
        "all uploads accepted at once", n_acc == sc.uploads and p99 <= sc.accept_p99_bound,
        f"{sc.uploads} answered 202, p99 ≤ {sc.accept_p99_bound:g} s",
        f"{n_acc} accepted, {acc.count('rejected')} rejected, {acc.count('timed_out')} timed out; "
        f"p99 {p99:.2f} s"))
    job_of = acc.job_of
    # a document whose upload was not accepted has no job: it counts as never processed
    good_jobs = [job_of.get(d.name, f"not accepted: {d.name}") for d in docs
                 if d.name not in poison_names]
    after_effect_jobs = {job_of[n] for n in faults.crash_after_effect_on if n in job_of}
    checks.append(_effects_check(sc, config, run, good_jobs, after_effect_jobs))
    checks.append(_dlq_check(sc, config, run, poison_names, job_of))
    processed = sum(1 for j in good_jobs if j in run.completed_at)
    dead = len(run.dead_lettered)
    lost = sc.uploads - processed - dead - run.left_in_queue
    checks.append(ex.Check(
        "accounting: produced = processed + dead-lettered, none lost",
        processed + dead == sc.uploads and lost == 0 and run.left_in_queue == 0,
        f"{sc.uploads} = {sc.uploads - sc.poison} + {sc.poison}, 0 lost",
        f"{sc.uploads} produced = {processed} processed + {dead} dead-lettered + "
        f"{run.left_in_queue} still queued; {lost} lost"))
    poison_left = sum(1 for n in poison_names if job_of.get(n) in run.queued)
    checks.append(_drain_check(sc, config, run, poison_left))
    return checks


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's answer to the scenario exercise of notebook 03."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)
