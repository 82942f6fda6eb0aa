"""Wrong answers for the scenario exercise of ``04_model_routing.ipynb``: routers that still
send too much to the large model, lose quality, or report the wrong numbers.

Each builder returns ``{"router": ..., "report": ...}`` as a learner would build it in the
notebook's starter cell. The classifier answers train on the train split (the embedding
model, or its cached vectors, is needed).
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from labsupport import model_routing as mr
from labsupport.checks import model_routing as checks
from labsupport.solutions import model_routing as key

from . import Exercise, WrongAnswer, step


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
    return {"router": router, "report": checks.reference_report(router(mr.router_view(test)), test)}


def reads_the_label() -> dict[str, Any]:
    """Routes on ``r.is_complex``: a router is never given the label."""
    def my_router(batch: list[mr.Request]) -> list[str]:
        return ["large" if r.is_complex else "small" for r in batch]

    return {"router": my_router, "report": {}}


def reads_the_output_length() -> dict[str, Any]:
    """Routes on the answer's length, known only after the answer exists: a label leak."""
    def my_router(batch):
        return ["large" if r.output_tokens > 300 else "small" for r in batch]

    return {"router": my_router, "report": {}}


def looks_up_the_label_by_id() -> dict[str, Any]:
    """Looks each request up in data/routing/requests.csv by its id."""
    with mr.REQUESTS_CSV.open(newline="", encoding="utf-8") as handle:
        labels = {row["id"]: row["label"] for row in csv.DictReader(handle)}

    def my_router(batch):
        return ["large" if labels[r.id] == "complex" else "small" for r in batch]

    return {"router": my_router, "report": {}}


def prompt_length_only() -> dict[str, Any]:
    """Large when the prompt is longer than 35 tokens: short complex requests go small."""
    return _with_true_report(lambda batch: ["large" if r.prompt_tokens > 35 else "small"
                                            for r in batch])


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


# --- the steps ------------------------------------------------------------------------------

def cost_without_system_prompt():
    def cost(backend, prompt_tokens, output_tokens):
        return (prompt_tokens * backend.input_usd_per_mtok
                + output_tokens * backend.output_usd_per_mtok) / 1e6
    return cost


def cost_output_at_input_price():
    def cost(backend, prompt_tokens, output_tokens):
        return (prompt_tokens + mr.SYSTEM_PROMPT_TOKENS + output_tokens) * backend.input_usd_per_mtok / 1e6
    return cost


def cost_per_thousand():
    def cost(backend, prompt_tokens, output_tokens):
        return ((prompt_tokens + mr.SYSTEM_PROMPT_TOKENS) * backend.input_usd_per_mtok
                + output_tokens * backend.output_usd_per_mtok) / 1e3
    return cost


def rules_case_sensitive():
    def router(batch):
        return ["large" if r.prompt_tokens > 35 or any(k in r.text for k in mr.COMPLEX_KEYWORDS)
                else "small" for r in batch]
    return router


def rules_at_least_35():
    def router(batch):
        return ["large" if r.prompt_tokens >= 35 or any(k in r.text.lower() for k in mr.COMPLEX_KEYWORDS)
                else "small" for r in batch]
    return router


def rules_few_keywords():
    def router(batch):
        few = ("design", "plan", "strategy", "analyse", "build", "compare", "refactor", "migrate")
        return ["large" if r.prompt_tokens > 35 or any(k in r.text.lower() for k in few)
                else "small" for r in batch]
    return router


def apgr_mean_of_points():
    def apgr(share, pgr_values):
        return float(np.mean(pgr_values))
    return apgr


def apgr_left_rectangles():
    def apgr(share, pgr_values):
        return float(np.sum(np.diff(share) * pgr_values[:-1]))
    return apgr


def alpha_fixed():
    def choose(scores, is_complex, catch):
        return 0.31  # found on the test split
    return choose


def alpha_quantile():
    def choose(scores, is_complex, catch):
        return float(np.quantile(scores[is_complex], 1 - catch))  # interpolates between scores
    return choose


def alpha_all_scores():
    def choose(scores, is_complex, catch):
        ordered = np.sort(scores)  # every request's score, not only the complex ones
        return float(ordered[int(np.floor((1 - catch) * len(ordered)))])
    return choose


STEPS = [
    step(checks, 1, lambda: key.cost, [
        WrongAnswer("no system prompt", "150 tokens on every call are paid too",
                    cost_without_system_prompt, "system prompt"),
        WrongAnswer("output at the input price", "output tokens cost 4× more here",
                    cost_output_at_input_price, "both directions"),
        WrongAnswer("per thousand tokens", "prices are per million tokens", cost_per_thousand,
                    "both directions"),
    ]),
    step(checks, 2, lambda: key.rules_router, [
        WrongAnswer("case-sensitive keywords", "'PLAN the offsite' slips through",
                    rules_case_sensitive, "edges"),
        WrongAnswer("35 tokens is long", "the rule is strictly more than 35", rules_at_least_35,
                    "edges"),
        WrongAnswer("eight keywords", "the rule uses every keyword of mr.COMPLEX_KEYWORDS",
                    rules_few_keywords, "unseen requests"),
    ]),
    step(checks, 3, lambda: key.apgr, [
        WrongAnswer("mean of the points", "unevenly spaced points are not an area",
                    apgr_mean_of_points, "trapezoids"),
        WrongAnswer("left rectangles", "not the trapezoid rule", apgr_left_rectangles,
                    "trapezoids"),
    ]),
    step(checks, 4, lambda: key.alpha_for_recall, [
        WrongAnswer("α tuned on the test split", "a fixed α ignores the training data",
                    alpha_fixed, "comes from the scores"),
        WrongAnswer("np.quantile", "interpolates between scores: catches fewer than 99%",
                    alpha_quantile, "largest α"),
        WrongAnswer("every request's score", "the recall is over complex requests only",
                    alpha_all_scores, "largest α"),
    ]),
]


EXERCISES = [
    *STEPS,
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
            WrongAnswer("reads the label", "a router is never given the label",
                        reads_the_label, failing_row="your code runs"),
            WrongAnswer("routes on the output length", "the answer's length is known only "
                        "after the answer: a label leak", reads_the_output_length,
                        failing_row="your code runs"),
            WrongAnswer("looks the label up by id", "a router sees no id to look a label up "
                        "by", looks_up_the_label_by_id, failing_row="your code runs"),
            WrongAnswer("prompt length only", "short complex requests go to the small model",
                        prompt_length_only, failing_row="complex requests sent to small"),
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
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz",
        check=lambda a: checks.check_quiz(a),
        answer_key=lambda: dict(key.QUIZ_ANSWERS),
        gallery=[
            WrongAnswer("unanswered", "the starter answers nothing", lambda: {}, "test-set"),
            WrongAnswer("cost without the system prompt", "650 input tokens, not 500",
                        lambda: {**key.QUIZ_ANSWERS, "request-cost": 4.25}, "request-cost"),
            WrongAnswer("cascade in parallel", "escalation waits for the small answer",
                        lambda: {**key.QUIZ_ANSWERS, "cascade-latency": 3}, "cascade-latency"),
        ],
    ),
]
