"""Checks of ``04_model_routing.ipynb``: the scenario exercise (stop sending everything to the
largest model).

The learner's router runs once on the held-out test split, given only what a router sees
(:func:`route_test_split`, :class:`~labsupport.model_routing.RouterRequest`); its routing is judged against fixed references, the oracle
router (cost) and all-large (quality, over :data:`CHECK_SEEDS` draws of which complex
requests the small model fails), at the scenario's 10,000 requests a day. The report's
seven numbers are compared with :func:`reference_report`. A learner can reproduce any row:
``checks.outcome(my_answer["router"], seed=3)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import model_routing as mr
from labsupport import quiz as qz
from labsupport.checks import model_routing_steps as steps

EXERCISE_ID = "04_model_routing"
REPORT_KEYS = ("all_large_daily_cost_usd", "all_large_mean_latency_s",
               "all_large_p95_latency_s", "daily_cost_usd", "saving_usd",
               "mean_latency_s", "p95_latency_s")
MAX_COST_VS_ORACLE = 1.15  # the router's daily cost may be at most 15 % above the oracle's
MIN_QUALITY_VS_LARGE = 0.97
MAX_COMPLEX_TO_SMALL = 0.05
CHECK_SEEDS = (0, 1, 2, 3, 4)  # which complex requests the small model fails: 5 draws
REPORT_TOLERANCE = 0.01  # reported numbers within 1 %
CASE = "the test split (data/routing/requests.csv), as a router sees it (mr.router_view)"


def reference_report(routes: Any, requests: Sequence[mr.Request]) -> dict[str, float]:
    """The numbers the exercise asks for, for ``routes`` on ``requests``."""
    base = mr.evaluate(requests, mr.all_large(requests))
    mine = mr.evaluate(requests, routes)
    return {"all_large_daily_cost_usd": base.daily_cost_usd,
            "all_large_mean_latency_s": base.mean_latency_s,
            "all_large_p95_latency_s": base.p95_latency_s,
            "daily_cost_usd": mine.daily_cost_usd,
            "saving_usd": base.daily_cost_usd - mine.daily_cost_usd,
            "mean_latency_s": mine.mean_latency_s, "p95_latency_s": mine.p95_latency_s}


def route_test_split(router: mr.Router) -> np.ndarray:
    """Run ``router`` on the test split as the checker does, on fresh ``mr.RouterRequest``
    copies (text, prompt tokens, domain: no label, answer length or id); the routing as a
    boolean array (True = large). Raises what the router raises."""
    test = mr.load_requests("test")
    return mr.as_large_mask(router(mr.router_view(test)), len(test))


def outcome(router: mr.Router, seed: int = 0) -> mr.Outcome:
    """What the checker measures for ``router`` on the test split, for one draw (``seed``)
    of which complex requests the small model fails."""
    return mr.evaluate(mr.load_requests("test"), route_test_split(router), seed=seed)


def _reproduce(seed: int = 0) -> str:
    return f'checks.outcome(my_answer["router"]{f", seed={seed}" if seed else ""})'


def _checks(answer: Any) -> Iterator[ex.Check]:
    if not isinstance(answer, dict) or "router" not in answer:
        yield ex.Check("answer is a dict with 'router' and 'report'", False,
                       "{'router': my_router, 'report': my_report}",
                       f"{type(answer).__name__} {answer!r:.60}",
                       hint="Leave the last line of the starter cell as it is.")
        return
    bad = ex.expect_callable(answer["router"], "your router")
    if bad:
        yield bad
        return
    test = mr.load_requests("test")
    masks: list[np.ndarray] = []  # the one run of the router that every row below judges

    def run_router() -> ex.Check:
        masks.append(route_test_split(answer["router"]))
        return ex.Check("your code runs", True, "no exception", f"{len(test)} routes")

    ran = ex.judge("your code runs", run_router, case=CASE,
                   reproduce='checks.route_test_split(my_answer["router"])')
    if not ran.passed:
        yield ran
        return
    mask = masks[0]
    oracle = mr.evaluate(test, mr.oracle_router(test))
    mine = mr.evaluate(test, mask)
    base = mr.evaluate(test, mr.all_large(test))

    def cost() -> ex.Check:
        ratio = mine.daily_cost_usd / oracle.daily_cost_usd
        return ex.Check(
            "daily cost close to the oracle's", ratio <= MAX_COST_VS_ORACLE,
            f"≤ {MAX_COST_VS_ORACLE:.0%} of the oracle's ${oracle.daily_cost_usd:.2f}/day",
            f"${mine.daily_cost_usd:.2f}/day = {ratio:.0%} of the oracle "
            f"({100 * mine.share_large:.0f}% of requests to large; oracle "
            f"{100 * oracle.share_large:.0f}%)",
            hint="Too many simple requests go to the large model: route the simple ones to "
                 "small (with the classifier: a threshold α on P(complex); raise α to send "
                 "fewer to large), and look at which simple requests still go to large.")

    yield ex.judge("daily cost close to the oracle's", cost, case=CASE, reproduce=_reproduce())

    qualities = [mr.evaluate(test, mask, seed=s).quality for s in CHECK_SEEDS]
    worst_seed = CHECK_SEEDS[int(np.argmin(qualities))]

    def quality() -> ex.Check:
        worst = min(qualities)
        return ex.Check(
            "quality vs all-large", worst >= MIN_QUALITY_VS_LARGE * base.quality,
            f"≥ {MIN_QUALITY_VS_LARGE:.0%} of all-large ({100 * base.quality:.0f}%) "
            f"for each of {len(CHECK_SEEDS)} draws of the small model's failures",
            f"worst {100 * worst:.1f}% (draw {worst_seed}), best {100 * max(qualities):.1f}%",
            hint="Complex requests sent to the small model lose quality: lower α.")

    yield ex.judge("quality vs all-large", quality, case=f"{CASE}, draw {worst_seed}",
                   reproduce=_reproduce(worst_seed))

    def complex_to_small() -> ex.Check:
        share = mine.complex_to_small / mine.n_complex
        return ex.Check(
            "complex requests sent to small", share <= MAX_COMPLEX_TO_SMALL,
            f"≤ {MAX_COMPLEX_TO_SMALL:.0%} of {mine.n_complex} complex requests",
            f"{mine.complex_to_small} of {mine.n_complex} ({share:.1%})",
            hint="Look at the complex requests your router sends to small: are they short? "
                 "Does a keyword rule or a lower α catch them?")

    yield ex.judge("complex requests sent to small", complex_to_small, case=CASE,
                   reproduce=_reproduce())
    yield ex.judge("daily cost, saving, mean and p95 latency reported",
                   lambda: report_check(answer.get("report"), reference_report(mask, test)),
                   case=f"{CASE}, your report",
                   reproduce=_reproduce())


def report_check(report: Any, expected: dict[str, float]) -> ex.Check:
    """The report row: each of :data:`REPORT_KEYS` a number within 1 % of ``expected``."""
    name = "daily cost, saving, mean and p95 latency reported"
    want = "numbers within 1 % of the checker's, in USD/day and seconds"
    if not isinstance(report, dict):
        return ex.Check(name, False, want, f"{type(report).__name__} instead of a dict",
                        hint="Fill in my_report with numbers from mr.evaluate(...).")
    problems = []
    for key in REPORT_KEYS:
        value = report.get(key)
        target = expected[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            problems.append(f"{key} missing")
        elif abs(value - target) > REPORT_TOLERANCE * max(abs(target), 1e-9):
            problems.append(f"{key} = {value:.4g}, checker gets {target:.4g}")
    found = "all 7 match" if not problems else "; ".join(problems[:4]) + (
        f" (+{len(problems) - 4} more)" if len(problems) > 4 else "")
    return ex.Check(name, not problems, want, found,
                    hint="Evaluate on mr.load_requests('test') with the defaults of "
                         "mr.evaluate; the saving is all-large minus yours.")


def check_exercise(answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's router and report for the scenario exercise of notebook 04."""
    return ex.run_checks(EXERCISE_ID, _checks, answer, solution_mode=solution_mode)


# --- the steps and the review quiz ------------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: cost, 2: rules router, 3: APGR, 4: α from training)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


QUIZ = qz.Quiz(EXERCISE_ID, {
    "test-set": qz.Choice(
        "You pick the classifier's threshold α as the value that gives the best cost at 97% "
        "quality on the test split, and report that cost. What is wrong?",
        ("Nothing: the test split is the most realistic data you have",
         "The reported cost is tuned to those very requests: it overstates what α will do on "
         "tomorrow's traffic. Choose α on training data (out-of-fold scores) and touch the "
         "test split once, to measure",
         "The test split is too small to compute a cost on",
         "α must always be 0.5"),
        1, "A threshold picked on the data it is scored on fits that data's quirks; the number "
           "you report is then an optimistic estimate. Out-of-fold scores on the training split "
           "give every training request a score from a model that never saw it: choose α "
           "there, then measure once on the test split."),
    "apgr-random": qz.Choice(
        "A router sends each request to the strong model at random, with probability p, "
        "whatever the request. What is its APGR (area under PGR against the share of strong "
        "calls)?",
        ("0.5: its PGR equals its share of strong calls, the diagonal",
         "0: it recovers nothing", "1: it recovers everything at 100% strong calls",
         "It depends on the models"),
        0, "Random routing recovers the quality gap in proportion to the calls it sends to "
           "the strong model: PGR = share, whose area over [0, 1] is one half. RouteLLM reports "
           "a random router at 0.5 for that reason: a learned router is worth its APGR above it."),
    "request-cost": qz.Numeric(
        "gpt-4o at 2.50 USD per 1M input tokens and 10.00 per 1M output tokens (prices as of "
        "2024-10-02). One request: 500 prompt tokens plus a 150-token system prompt, 300 output "
        "tokens. What does it cost, in thousandths of a dollar (USD × 1000)?",
        4.625, 0.01, "USD × 1000",
        "(500 + 150) × 2.50 / 1e6 + 300 × 10.00 / 1e6 = 0.001625 + 0.003 = 0.004625 USD, "
        "so 4.625 thousandths of a dollar. Output tokens cost four times input tokens here: "
        "long answers, not long prompts, drive the bill."),
    "cascade-latency": qz.Choice(
        "A cascade sends every request to the small model first and escalates to the large one "
        "when a scorer does not trust the answer. What does an escalated request's user wait?",
        ("The large model's latency only", "The small model's latency only",
         "Both: the small model's answer, the scorer, then the large model's answer",
         "Nothing extra: the two calls run in parallel"),
        2, "Escalation is sequential: the small answer has to exist before it can be judged. "
           "That is why the cascade's p99 latency can be worse than all-large's even when its "
           "cost is lower: the Measure table shows it."),
    "leak": qz.Choice(
        "A router that routes on each request's output length (in tokens) matches the oracle. "
        "Why may it not be used?",
        ("It may: output length is a fine signal",
         "The output length is known only after the answer is generated: at request time the "
         "router cannot see it, so it is a label leak",
         "Output lengths are too noisy", "It would be too slow"),
        1, "A router decides before any model runs; it sees the prompt and request-time "
           "metadata. Anything derived from the answer (its length, whether it was right) is "
           "the label in disguise. Here the router receives RouterRequest objects: text, "
           "prompt tokens and the product area, nothing else."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)
