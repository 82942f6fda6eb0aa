"""Wrong answers for notebook 08_capstone_ai_assistant: the game day's incidents, the final
check and the quiz.

An incident's answer is ``{"fault": name, "fix": {setting: value}}``. The wrong fixes are the
ones that move the number without removing the cause (a longer timeout, more workers without
a queue, more batch slots, filtering after the top k, ...), a right fix under the wrong name,
and settings that do not exist.
"""

from __future__ import annotations

from typing import Any

from labsupport import capstone as cap
from labsupport.checks import capstone as checks
from labsupport.solutions import capstone as key

from . import Exercise, WrongAnswer, step

STEP = {fault: n for n, fault in enumerate(checks.INCIDENT_ORDER, start=1)}
QUEUE = key.FIXES["upload burst"]


def _answer(fault: str, fix: dict[str, Any]) -> dict[str, Any]:
    return {"fault": fault, "fix": fix}


def _common(fault: str) -> list[WrongAnswer]:
    """The mistakes any incident can get."""
    other = next(f for f in cap.FAULTS if f != fault)
    first_invariant = checks.gd.INVARIANTS[fault][0].name
    return [
        WrongAnswer("starter", "names nothing and changes nothing",
                    lambda: {"fault": None, "fix": {}}, "the fault is named"),
        WrongAnswer("right name, no fix", "the fault stays: the evidence does not change",
                    lambda: _answer(fault, {}), first_invariant),
        WrongAnswer("right fix, wrong name", f"calls it {other!r}: the evidence points "
                    "elsewhere", lambda: _answer(other, dict(key.FIXES[fault])),
                    "the fault is named"),
        WrongAnswer("a setting that does not exist", "the system has no such knob",
                    lambda: _answer(fault, {"more_servers": 2}), "the fix is a change of settings"),
    ]


SPECIFIC: dict[str, list[WrongAnswer]] = {
    "upload burst": [
        WrongAnswer("more workers without a queue", "the processor still takes 20 at once: "
                    "480 uploads get 503", lambda: _answer("upload burst", {"ingest_workers": 500}),
                    "no lost job"),
        WrongAnswer("a queue with SQS's defaults", "visibility 30 s and no dead-letter queue: "
                    "crashed workers' documents wait 30 s and poison ones never leave",
                    lambda: _answer("upload burst", {"ingest": "queue"}), "no lost job"),
        WrongAnswer("a queue without a dead-letter queue", "the two poison documents are "
                    "received forever", lambda: _answer("upload burst", {**QUEUE,
                                                                          "max_receive_count": None}),
                    "no lost job"),
    ],
    "lost response": [
        WrongAnswer("retries turned off", "no double charge, but every lost response leaves a "
                    "user without an answer", lambda: _answer("lost response", {"client_retries": 0}),
                    "every question answered"),
        WrongAnswer("a longer client timeout", "the response is lost, not slow: the retry still "
                    "bills again", lambda: _answer("lost response", {"client_timeout_s": 30.0}),
                    "no double charge"),
    ],
    "queueing for batch slots": [
        WrongAnswer("more batch slots", "each step then decodes more sequences: TPOT grows and "
                    "throughput barely moves", lambda: _answer("queueing for batch slots",
                                                               {"batch_slots": 32}),
                    "utilisation"),
        WrongAnswer("four replicas", "98% utilisation: no headroom, the queue builds on any "
                    "busier minute", lambda: _answer("queueing for batch slots", {"replicas": 4}),
                    "utilisation"),
        WrongAnswer("more ingestion workers", "the wrong queue: uploads, not batch slots",
                    lambda: _answer("queueing for batch slots", {"ingest_workers": 40}),
                    "TTFT p99 within budget"),
        WrongAnswer("a longer client timeout", "users wait just as long for the first token",
                    lambda: _answer("queueing for batch slots", {"client_timeout_s": 60.0}),
                    "utilisation"),
    ],
    "tenant filter missing": [
        WrongAnswer("filter after the top k", "no leak, but fewer than k results (and the other "
                    "client's data still read)", lambda: _answer("tenant filter missing",
                                                                 {"related_post_filter": True}),
                    "every query gets top_k results"),
        WrongAnswer("one result only", "the nearest other document is often the other client's",
                    lambda: _answer("tenant filter missing", {"top_k": 1}),
                    "no cross-tenant document"),
        WrongAnswer("the related path scoped, the answer path not", "fixes one path and breaks "
                    "the other", lambda: _answer("tenant filter missing",
                                                 {"tenant_scoped_paths": ("related",)}),
                    "no cross-tenant document"),
    ],
    "slow replica": [
        WrongAnswer("a longer timeout", "the slow replica still gets a third of the traffic",
                    lambda: _answer("slow replica", {"client_timeout_s": 30.0}), "p99 within budget"),
        WrongAnswer("a fourth replica", "round-robin still sends it a quarter",
                    lambda: _answer("slow replica", {"replicas": 4}), "p99 within budget"),
        WrongAnswer("least-connections alone", "it gets less, but what it gets is 10x slow",
                    lambda: _answer("slow replica", {"balancer": "least-connections"}),
                    "p99 within budget"),
        WrongAnswer("ejection behind round-robin", "ejected, it comes back after 30 s and "
                    "round-robin fills it again", lambda: _answer("slow replica",
                                                                  {"outlier_ejection": True}),
                    "p99 within budget"),
    ],
    "chunks cut mid-sentence": [
        WrongAnswer("more chunks per answer", "twice the text, still cut mid-sentence",
                    lambda: _answer("chunks cut mid-sentence", {"top_k": 10}), "recall"),
        WrongAnswer("sections, but ten per answer", "the right chunks drowned in text: IoU "
                    "halves", lambda: _answer("chunks cut mid-sentence",
                                              {"chunker": "sections", "chunk_size": 80,
                                               "top_k": 10}), "IoU"),
    ],
    "everything to the large model": [
        WrongAnswer("everything to the small model", "the bill falls and quality with it",
                    lambda: _answer("everything to the large model", {"router": "all_small"}),
                    "quality kept"),
        WrongAnswer("rules that call 80-token prompts simple", "too much complex work to small",
                    lambda: _answer("everything to the large model",
                                    {"router": "rules", "max_simple_tokens": 80}), "quality kept"),
    ],
}


def _final_but(**changes: Any) -> dict[str, Any]:
    settings = key.hardened_settings()
    for name, value in changes.items():
        if value is None and name != "max_receive_count":
            settings.pop(name, None)
        else:
            settings[name] = value
    return settings


EXERCISES = [
    *(step(checks, n, lambda n=n: key.incident_answer(n),
           _common(fault) + SPECIFIC[fault])
      for fault, n in STEP.items()),
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=key.hardened_settings,
        gallery=[
            WrongAnswer("starter", "the shipped settings: every weakness still there",
                        lambda: {}, "no double charge"),
            WrongAnswer("four replicas", "98% utilisation: the queue builds",
                        lambda: _final_but(replicas=4), "utilisation"),
            WrongAnswer("no idempotency keys", "everything else fixed, the bill still doubles",
                        lambda: _final_but(idempotency_keys=None), "no double charge"),
            WrongAnswer("everything to the small model", "cheap and wrong",
                        lambda: _final_but(router="all_small"), "quality kept"),
            WrongAnswer("no dead-letter queue", "poison uploads loop forever",
                        lambda: _final_but(max_receive_count=None), "no lost job"),
            WrongAnswer("a list, not a dict", "the settings are a dict of changes",
                        lambda: [("replicas", 5)], "your settings"),
        ],
    ),
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz",
        check=lambda a: checks.check_quiz(a),
        answer_key=lambda: dict(key.QUIZ_ANSWERS),
        gallery=[
            WrongAnswer("unanswered", "the starter answers nothing", lambda: {}, "retry-key"),
            WrongAnswer("a longer timeout", "a lost response is not a slow one",
                        lambda: {**key.QUIZ_ANSWERS, "retry-key": 0}, "retry-key"),
            WrongAnswer("a fourth replica", "round-robin still feeds the slow one",
                        lambda: {**key.QUIZ_ANSWERS, "slow-replica": 1}, "slow-replica"),
            WrongAnswer("500 x 0.25 s", "that is one worker's time, not twenty's",
                        lambda: {**key.QUIZ_ANSWERS, "drain-time": 125.0}, "drain-time"),
            WrongAnswer("four replicas", "98% utilisation",
                        lambda: {**key.QUIZ_ANSWERS, "replicas": 4}, "replicas"),
            WrongAnswer("post-filter", "fewer than k results",
                        lambda: {**key.QUIZ_ANSWERS, "tenant-path": 0}, "tenant-path"),
        ],
    ),
]
