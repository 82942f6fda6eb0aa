"""Checks of ``03_message_queues.ipynb``: the four steps (``message_queues_steps.py``), the
review quiz, and the scenario exercise (500 uploads at 2pm, a processing service that
handles 20 at a time).

:func:`check_exercise` sends the uploads over HTTP to the front door, then runs the
learner's worker on the learner's settings on a simulated clock, with crashes injected in
the middle of the service call, right after the worker's first commit for a document,
and just before the delete, and two poison documents. Every row is read from counts: the
service's calls and returns, the store's effects, the queue and its dead-letter queue,
and the drain time in simulated seconds, never from the machine's clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import message_queues as mq
from labsupport import quiz as qz
from labsupport.checks import message_queues_steps as steps
from labsupport.services.message_queues import (
    Document,
    FaultPlan,
    PipelineConfig,
    RunResult,
    faults_by_id,
    make_documents,
    run_pipeline,
)

EXERCISE_ID = "03_message_queues"


@dataclass(frozen=True)
class Scenario:
    """2pm: 500 users upload at once; the processing service handles 20 at a time."""

    uploads: int = 500
    capacity: int = 20  # concurrent documents the processing service handles
    processing_time: float = 0.25  # simulated seconds per document (minutes, scaled down)
    crash_in_service: int = 3  # workers that die halfway through the service call
    crash_after_commit: int = 6  # ... right after their first commit for the document
    crash_before_delete: int = 6  # ... after the work, just before the delete
    poison: int = 2  # documents that always fail
    drain_tolerance: float = 0.25  # drain within 25% of the ideal
    seed: int = 3

    @property
    def good(self) -> int:
        return self.uploads - self.poison

    @property
    def ideal_drain(self) -> float:
        """ceil(good documents / capacity) x processing time: no schedule does better."""
        return math.ceil(self.good / self.capacity) * self.processing_time

    @property
    def drain_bound(self) -> float:
        return (1 + self.drain_tolerance) * self.ideal_drain

    @property
    def deadline(self) -> float:
        """Simulated seconds the checker runs before it stops waiting for a drain."""
        return 2 * self.ideal_drain


SCENARIO = Scenario()


def scenario_faults(sc: Scenario = SCENARIO) -> tuple[list[Document], set[str], FaultPlan]:
    """The documents, the poison ones' names, and the crashes (fixed by the seed; all in
    the first three quarters, so a good configuration can finish its retries in time)."""
    rng = np.random.default_rng(sc.seed)
    poison = {int(i) for i in rng.choice(np.arange(20, sc.uploads // 2), sc.poison, replace=False)}
    docs = make_documents(sc.uploads, poison, prefix="upload")
    pool = [d.name for i, d in enumerate(docs[20:3 * sc.uploads // 4], 20) if i not in poison]
    picked = [str(n) for n in rng.choice(pool, sc.crash_in_service + sc.crash_after_commit
                                         + sc.crash_before_delete, replace=False)]
    a, b = sc.crash_in_service, sc.crash_in_service + sc.crash_after_commit
    return docs, {docs[i].name for i in poison}, FaultPlan(set(picked[:a]), set(picked[a:b]),
                                                          set(picked[b:]))


def _config_rows(config: PipelineConfig, sc: Scenario) -> Iterator[ex.Check]:
    workers_ok = type(config.workers) is int and 1 <= config.workers <= sc.capacity
    yield ex.Check("workers within capacity", workers_ok, f"1 to {sc.capacity} workers",
                   f"{config.workers!r} workers", hint=f"The processing service handles "
                   f"{sc.capacity} at a time; more workers only get 'overloaded' errors.")
    problems = []
    try:
        mq.check_range("visibility_timeout", config.visibility_timeout, 0,
                       mq.SQS_VISIBILITY_TIMEOUT_MAX)
    except mq.SQSError as exc:
        problems.append(str(exc))
    if config.max_receive_count is not None:
        try:
            mq.check_redrive_policy("jobs", "jobs-dlq", config.max_receive_count)
        except mq.SQSError as exc:
            problems.append(str(exc))
    if not callable(config.worker):
        problems.append(f"worker is {config.worker!r:.40}, not a function")
    yield ex.Check("settings SQS accepts", not problems,
                   "visibility 0-43,200 s, max_receive_count None or 1-1,000, a worker function",
                   "; ".join(problems) or "accepted")


def _effect_rows(sc: Scenario, config: PipelineConfig, run: RunResult, good: list[str],
                 text_of: dict[str, str], faults: FaultPlan) -> Iterator[ex.Check]:
    fake = sorted({d for d, t in run.effect_texts
                   if run.service.returned[d] < run.effects[d] or t != text_of.get(d)})
    yield ex.Check(
        "every effect comes from a real call to the service", not fake,
        "effects per document ≤ the texts the service returned for it, and the same text",
        f"{len(fake)} documents with effects the service never produced" if fake else
        f"{len(run.effect_texts)} effects, each from a call",
        hint=(f"For example {fake[0]}: {run.effects[fake[0]]} effect(s), "
              f"{run.service.returned[fake[0]]} successful call(s). Record the text that "
              "service.extract_text(doc) returned, after it returned." if fake else ""))
    counts = [run.effects.get(j, 0) for j in good]
    once, missing, dup = counts.count(1), counts.count(0), sum(1 for c in counts if c > 1)
    hints = []
    crashed_after = faults.after_commit
    if dup:
        hints.append(
            f"{sum(1 for j in crashed_after if run.effects.get(j, 0) > 1)} of the {dup} are "
            "documents whose worker crashed right after its first commit: if the effect and "
            "the processed mark are two commits, the redelivery applies the effect again. "
            "Use store.apply_once(doc_id, text): one transaction.")
        if config.visibility_timeout <= sc.processing_time:
            hints.append(f"The visibility timeout ({config.visibility_timeout:g} s) is not above "
                         f"the processing time ({sc.processing_time:g} s): a second worker gets "
                         "the message while the first still works on it.")
    if missing:
        lost_marked = sum(1 for j in good if run.effects.get(j, 0) == 0 and j not in run.queued
                          and j not in run.dead_lettered)
        in_dlq = sum(1 for j in good if j in run.dead_lettered)
        queued = sum(1 for j in good if j in run.queued and run.effects.get(j, 0) == 0)
        if lost_marked:
            hints.append(f"{lost_marked} left the queue with no effect: a delete before the "
                         "work, a processed mark before the effect, or an exception caught and "
                         "the message deleted anyway. Crashes hit in the middle of the service "
                         "call: delete only after the effect is committed.")
        if in_dlq:
            hints.append(f"{in_dlq} good documents went to the dead-letter queue: crashes and "
                         f"redeliveries used up max_receive_count = {config.max_receive_count}.")
        if queued:
            hints.append(f"{queued} were still in the queue at {sc.deadline:g} s (see the drain "
                         "row).")
    yield ex.Check(
        "every good document's effect exactly once", once == len(good) == sc.good,
        f"{sc.good} documents with exactly 1 effect",
        f"{once} exactly once; {dup} more than once; {missing} never", hint=" ".join(hints))


def _poison_row(sc: Scenario, config: PipelineConfig, run: RunResult,
                poison: list[str]) -> ex.Check:
    in_dlq = [j for j in poison if j in run.dead_lettered]
    good_there = len(run.dead_lettered) - len(in_dlq)
    still = [run.queued[j] for j in poison if j in run.queued]
    mrc, vt = config.max_receive_count, config.visibility_timeout
    if good_there:
        hint = (f"{good_there} good documents are in the DLQ too: crashes and redeliveries used "
                f"up max_receive_count = {mrc}, and each one is a false alarm for whoever "
                "watches the DLQ. Allow a retry or two.")
    elif mrc is None:
        hint = "Without max_receive_count there is no dead-letter queue: a poison document " \
               "is retried for ever."
    elif still:
        hint = (f"A poison document moves after {mrc} failed receives, each a full visibility "
                f"timeout apart: about {mrc} × {vt:g} s = {mrc * vt:g} s. Shorten the timeout"
                + (" or lower max_receive_count." if mrc > 5 else "."))
    else:
        hint = ("The poison documents' messages were deleted although their processing "
                "failed: delete only after the work succeeded, and let the service's "
                "exception propagate, so the message comes back and is dead-lettered.")
    return ex.Check("the poison documents, and only they, in the DLQ",
                    len(in_dlq) == sc.poison and not good_there,
                    f"{sc.poison} in the dead-letter queue, no good document",
                    f"{len(in_dlq)} poison and {good_there} good there" + (f"; {len(still)} still queued after "
                                              f"{' and '.join(map(str, still))} receives"
                                              if still else ""), hint=hint)


def _work_rows(sc: Scenario, config: PipelineConfig, run: RunResult, good: list[str],
               faults: FaultPlan) -> Iterator[ex.Check]:
    calls = sum(run.service.calls[j] for j in good)
    crashed = len(faults.in_service | faults.after_commit | faults.before_delete)
    budget = sc.good + crashed
    yield ex.Check(
        "no document processed twice at once", calls <= budget,
        f"≤ {budget} service calls for the good documents ({sc.good} + {crashed} crashed)",
        f"{calls} calls",
        hint=("" if calls <= budget else f"{calls - budget} calls too many: the visibility "
              f"timeout ({config.visibility_timeout:g} s) lets a message come back while its "
              f"worker still processes it ({sc.processing_time:g} s), and another worker "
              "repeats the work."))
    drained, lo, hi = run.drained_at, sc.ideal_drain, sc.drain_bound
    reasons = []
    if drained is not None and drained < lo:
        reasons.append("Faster than the service can go: the work was not all done.")
    if config.workers < sc.capacity:
        reasons.append(f"{config.workers} workers: at best ceil({sc.good}/{config.workers}) × "
                       f"{sc.processing_time:g} s = "
                       f"{math.ceil(sc.good / config.workers) * sc.processing_time:.2f} s.")
    if config.visibility_timeout <= sc.processing_time:
        reasons.append(f"The visibility timeout ({config.visibility_timeout:g} s) is not above "
                       f"the processing time ({sc.processing_time:g} s): workers repeat each "
                       "other's work.")
    if config.max_receive_count is None and drained is None:
        reasons.append("Without a dead-letter queue the poison documents never leave.")
    if config.visibility_timeout > hi - lo:
        reasons.append(f"A crashed worker's message waits a full visibility timeout "
                       f"({config.visibility_timeout:g} s) before a retry: keep it above the "
                       f"processing time, but not far above.")
    yield ex.Check(
        "drain time: the work's minimum, within 25%", drained is not None and lo <= drained <= hi,
        f"{lo:.2f} to {hi:.2f} simulated s (ceil({sc.good}/{sc.capacity}) × "
        f"{sc.processing_time:g} s, +{sc.drain_tolerance:.0%})",
        f"{drained:.2f} s" if drained is not None else
        f"not drained at {sc.deadline:g} s: {run.left_in_queue} messages left",
        hint=" ".join(reasons))


def _run(config: PipelineConfig, sc: Scenario) -> RunResult:
    docs, _, faults = scenario_faults(sc)
    return run_pipeline(config, docs, processing_time=sc.processing_time,
                        capacity=sc.capacity, faults=faults, via_http=True,
                        deadline=sc.deadline)


def outcome(answer: Any, sc: Scenario = SCENARIO) -> RunResult:
    """The run the checker judges: ``answer()``'s settings and worker on the scenario."""
    return _run(answer(), sc)


def _checks(answer: Any, sc: Scenario = SCENARIO) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(answer, "my_pipeline"):
        yield bad
        return
    config = answer()
    if bad := ex.expect_type(config, PipelineConfig, "my_pipeline()"):
        yield bad
        return
    rows = list(_config_rows(config, sc))
    yield from rows
    if not all(r.passed for r in rows):
        return
    docs, poison_names, faults = scenario_faults(sc)
    with ex.on_input("the scenario: 500 uploads over HTTP, crashes and poison",
                     "checks.outcome(my_pipeline)"):
        run = _run(config, sc)
    acc = run.accept
    assert acc is not None
    yield ex.Check("all uploads accepted", acc.count("accepted") == sc.uploads,
                   f"{sc.uploads} answered 202", f"{acc.count('accepted')} accepted, "
                   f"{acc.count('rejected')} rejected, {acc.count('timed_out')} timed out")
    if run.hung:
        yield ex.Check("every worker gives its turn back", False, "each turn ends", run.hung,
                       hint="A worker turn receives at most one message, processes it and "
                       "returns; no endless loop, no service call inside a store transaction.")
        return
    job_of = acc.job_of
    good = [job_of.get(d.name, f"not accepted: {d.name}") for d in docs
            if d.name not in poison_names]
    text_of = {job_of[d.name]: d.content.upper() for d in docs if d.name in job_of}
    by_job = faults_by_id(faults, job_of)
    yield from _effect_rows(sc, config, run, good, text_of, by_job)
    yield _poison_row(sc, config, run, [job_of[n] for n in poison_names if n in job_of])
    dead_set = set(run.dead_lettered)
    processed = sum(1 for j in good if run.effects.get(j, 0) >= 1 and j not in run.queued
                    and j not in dead_set)
    dead, left = len(run.dead_lettered), run.left_in_queue
    lost = sc.uploads - processed - dead - left
    yield ex.Check(
        "accounting: produced = processed + dead-lettered, none lost",
        processed + dead == sc.uploads and lost == 0 and left == 0,
        f"{sc.uploads} = {sc.good} + {sc.poison}, 0 lost",
        f"{sc.uploads} produced = {processed} processed + {dead} dead-lettered + {left} still "
        f"queued; {lost} lost")
    yield from _work_rows(sc, config, run, good, by_job)
    if run.stats.errors and not all(e.startswith("CorruptDocument") for e in run.stats.errors):
        yield ex.Check("your worker's own errors", False, "only the poison documents fail",
                       "; ".join(dict.fromkeys(run.stats.errors)), hint="The first errors your worker "
                       "raised, other than the corrupt documents'.")


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's answer to the scenario exercise of notebook 03."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# --- the steps and the review quiz ------------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: receive, 2: delete, 3: redrive, 4: apply once)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


QUIZ = qz.Quiz(EXERCISE_ID, {
    "stale-delete": qz.Choice(
        "Worker A received a message and took longer than its visibility timeout; worker B "
        "has received it since. A now calls DeleteMessage with its own receipt handle. What "
        "does SQS do?",
        ("It fails with ReceiptHandleIsInvalid",
         "The request succeeds, but the message might not be deleted: B still holds it",
         "It deletes the message, and B's work is wasted",
         "It extends the visibility timeout for A"),
        1, "The API reference: \"If you use an old ReceiptHandle, the request will succeed, but "
           "the message might not be deleted.\" A's success tells A nothing; the effect must "
           "be idempotent because B will process the message again."),
    "visibility": qz.Choice(
        "Processing takes 0.25 s on average and up to 2 s at the 99th percentile. Which "
        "visibility timeout?",
        ("0.25 s, the mean", "Always SQS's default, 30 s",
         "Above the slow end of normal processing (say 3 s), and ChangeMessageVisibility "
         "for a job that needs longer",
         "0 s, so that failures retry at once"),
        2, "Shorter than the work, and a message comes back while its worker still works: "
           "duplicate work. Far longer, and a crashed worker's message waits the whole "
           "timeout before a retry. A long job extends its own timeout as it goes."),
    "redrive-time": qz.Numeric(
        "A poison message fails 0.05 s into each attempt and is not deleted. Visibility "
        "timeout 0.5 s, maxReceiveCount 3, and an idle worker receives it the moment it is "
        "visible. How many seconds after the first receive does it move to the DLQ?",
        1.5, 0.01, "s",
        "Receives at 0, 0.5 and 1.0 s: each hides it for 0.5 s from the receive, whatever "
        "the failure time. After the third it is visible again at 1.5 s, with a receive "
        "count of 3: the next receive moves it instead (SQS moves it when the count would "
        "exceed maxReceiveCount)."),
    "exactly-once": qz.Choice(
        "Which gives exactly-once effects on an SQS standard queue?",
        ("SQS deduplicates standard-queue messages for you",
         "A visibility timeout much longer than the processing time",
         "Recording the processed message or document id in the same transaction as the "
         "effect, and skipping ids already recorded",
         "Deleting the message before processing it"),
        2, "Standard queues deliver at least once; a long timeout makes a second delivery "
           "rarer, not impossible (a crash before the delete still redelivers). Deleting "
           "first turns at-least-once into at-most-once: a crash loses the job."),
    "little": qz.Choice(
        "40 uploads a second arrive on average, and each spends 5 s in the system "
        "(waiting plus processing). How many are in the system on average?",
        ("8", "200", "45", "40"),
        1, "Little's law: L = λW = 40 per second × 5 s = 200, whatever the distribution of "
           "arrivals and service times, as long as the system is stable."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)
