"""Wrong answers for the scenario exercise of ``04_model_routing.ipynb``: routers that still
send too much to the large model, lose quality, or report the wrong numbers.

Each builder returns ``{"router": ..., "report": ...}`` as a learner would build it in the
notebook's starter cell. The classifier answers train on the train split (the embedding
model, or its cached vectors, is needed).
"""

from __future__ import annotations

from typing import Any

from labsupport import model_routing as mr
from labsupport.checks import model_routing as checks

from . import Exercise, WrongAnswer


def starter() -> dict[str, Any]:
    """The notebook's untouched starter cell."""
    # STARTER: the only cell you edit.
    def my_router(batch: list[mr.Request]) -> list[str]:
        # Today's setup: everything goes to the large model.
        return ["large" for _ in batch]

    my_report = {
        "all_large_daily_cost_usd": None,  # USD per day, everything to large
        "all_large_mean_latency_s": None,  # seconds
        "all_large_p95_latency_s": None,  # seconds
        "daily_cost_usd": None,  # USD per day, with my_router
        "saving_usd": None,  # all-large daily cost minus yours
        "mean_latency_s": None,
        "p95_latency_s": None,
    }
    my_answer = {"router": my_router, "report": my_report}
    return my_answer


def _with_true_report(router: mr.Router) -> dict[str, Any]:
    """``router`` with the report a learner computes correctly for it."""
    test = mr.load_requests("test")
    return {"router": router, "report": checks.reference_report(router(test), test)}


def reads_the_label() -> dict[str, Any]:
    """Routes on ``r.is_complex``: the checker hides labels, so everything goes small."""
    def my_router(batch: list[mr.Request]) -> list[str]:
        return ["large" if r.is_complex else "small" for r in batch]

    return _with_true_report(my_router)


def classifier_at_one_half() -> dict[str, Any]:
    """The classifier at α = 0.5: "looks right", and misses 6 of the 80 complex requests."""
    classifier = mr.train_classifier(mr.load_requests("train"))
    return _with_true_report(classifier.router(0.5))


def saving_as_a_percentage() -> dict[str, Any]:
    """The answer key's router, with the saving reported in % instead of USD per day."""
    from labsupport.solutions import model_routing as solution

    answer = solution.build_answer()
    report = answer["report"]
    report["saving_usd"] = 100 * report["saving_usd"] / report["all_large_daily_cost_usd"]
    return answer


def answer_key() -> dict[str, Any]:
    from labsupport.solutions import model_routing as solution

    return solution.build_answer()


EXERCISES = [
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=answer_key,
        gallery=[
            WrongAnswer("starter", "everything still goes to gpt-4o: 37% above the oracle's "
                        "bill, every day", starter, failing_row="daily cost close"),
            WrongAnswer("all small", "the cheapest bill, but the small model fails 60% of "
                        "the complex requests", lambda: _with_true_report(mr.all_small),
                        failing_row="quality vs all-large"),
            WrongAnswer("the rules router alone", "short complex requests without a keyword "
                        "slip through to the small model",
                        lambda: _with_true_report(mr.rules_router),
                        failing_row="complex requests sent to small"),
            WrongAnswer("classifier at α = 0.5", "a misclassified complex request costs "
                        "quality; a false alarm costs a fraction of a cent",
                        classifier_at_one_half, failing_row="complex requests sent to small"),
            WrongAnswer("reads the label", "production requests carry no label: every "
                        "request looks simple", reads_the_label,
                        failing_row="complex requests sent to small"),
            WrongAnswer("the oracle", "it needs the labels a router never sees",
                        lambda: {"router": mr.oracle_router, "report": {}},
                        failing_row="your code runs"),
            WrongAnswer("routes as booleans", "the gateway needs a model name per request",
                        lambda: {"router": lambda batch: [True] * len(batch), "report": {}},
                        failing_row="your code runs"),
            WrongAnswer("the router alone, not the dict", "the report is missing",
                        lambda: mr.all_large, failing_row="answer is a dict"),
            WrongAnswer("saving as a percentage", "finance reads USD per day: 25 looks "
                        "like $25/day", saving_as_a_percentage, failing_row="reported"),
        ],
    ),
]
