"""The four "Your turn" step checks of ``04_model_routing.ipynb``.

Each judges one piece of the routing on inputs the notebook never showed:

1. the cost of a request: tokens × price, both directions, the system prompt included,
   on backends with other prices;
2. a rules router, on what a router sees (:class:`~labsupport.model_routing.RouterRequest`);
3. APGR, the area under a quality-gap-recovered curve, on uneven curves;
4. the threshold α chosen from out-of-fold scores of the *training* split only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import model_routing as mr
from labsupport.explore import model_routing as explore

CATCH = 0.99  # share of complex training requests the threshold must still send to large


# --- Step 1: the cost of a request --------------------------------------------------------------

def _cost_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    worst, where = 0.0, ""
    for k in range(200):
        backend = mr.Backend(f"model-{k}", float(rng.uniform(0.05, 20)), float(rng.uniform(0.1, 80)),
                             "2026-11-29", ttft_s=0.3, s_per_output_token=0.01)
        prompt, output = int(rng.integers(0, 3000)), int(rng.integers(0, 2000))
        want = float(backend.cost_usd(prompt, output))
        gap = abs(ex.as_number(fn(backend, prompt, output), "a cost in USD") - want) / want
        if gap > worst:
            worst, where = gap, (f"{backend.input_usd_per_mtok:.2f}/{backend.output_usd_per_mtok:.2f}"
                                 f" USD per 1M tokens, {prompt} prompt + {output} output tokens")
    yield ex.Check("tokens × price, both directions", worst <= 1e-9,
                   "within 1e-9 (relative) on 200 unseen backends and requests",
                   f"largest relative gap {worst:.3g}" + (f" ({where})" if where else ""),
                   hint="(prompt_tokens + mr.SYSTEM_PROMPT_TOKENS) × input price + output_tokens × "
                        "output price, prices per 1,000,000 tokens.")
    backend = mr.Backend("x", 4.0, 16.0, "2026-11-29", ttft_s=0.3, s_per_output_token=0.01)
    empty = ex.as_number(fn(backend, 0, 0), "a cost in USD")
    yield ex.Check("the system prompt is paid on every call", abs(empty - 150 * 4.0 / 1e6) < 1e-12,
                   f"{150 * 4.0 / 1e6:.6f} USD for an empty request ({mr.SYSTEM_PROMPT_TOKENS} "
                   "system-prompt tokens at 4 USD per 1M)", f"{empty:.6f} USD",
                   hint="The assistant's system prompt is sent with every request: add "
                        "mr.SYSTEM_PROMPT_TOKENS to the prompt's tokens.")


def step_1_checks(fn: Any, seed: int = 41) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your cost function"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _cost_rows(fn, seed), "cost", "random backends and token counts")


# --- Step 2: the rules router ---------------------------------------------------------------------

def _unseen_requests() -> list[mr.RouterRequest]:
    """Requests the notebook never shows: the rule's edges (35/36 tokens, a keyword in
    capitals or mid-word) and the train split as a router sees it."""
    edge = [mr.RouterRequest("Reset my password please " + "x" * 108, 35, "support"),
            mr.RouterRequest("Reset my password please " + "x" * 112, 36, "support"),
            mr.RouterRequest("PLAN the Q3 offsite", 5, "hr"),
            mr.RouterRequest("Can you Refactor this loop?", 7, "coding"),
            mr.RouterRequest("What time is it in Tokyo?", 7, "support")]
    return edge + mr.router_view(mr.load_requests("train"))


def _rules_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    batch = _unseen_requests()
    got = fn(list(batch))
    routes = list(got) if isinstance(got, (list, tuple)) else got
    if not isinstance(routes, list) or len(routes) != len(batch) or any(
            type(r) is not str or r not in mr.ROUTES for r in routes):
        yield ex.Check("one 'small' or 'large' per request", False,
                       f"a list of {len(batch)} strings, each 'small' or 'large'",
                       f"{type(got).__name__} {got!r:.80}")
        return
    want = mr.rules_router(batch)
    wrong = [i for i, (a, b) in enumerate(zip(routes, want, strict=True)) if a != b]
    edges = [i for i in wrong if i < 5]
    yield ex.Check("the rule's edges", not edges, "35 tokens small, 36 large; keywords in any case",
                   "; ".join(f"{batch[i].text[:40]!r} ({batch[i].prompt_tokens} tokens): {routes[i]}, "
                             f"the rule says {want[i]}" for i in edges) or "all as the rule says",
                   hint="Large when prompt_tokens > 35 (strictly), or when the lower-cased text "
                        "contains one of mr.COMPLEX_KEYWORDS.")
    rest = [i for i in wrong if i >= 5]
    yield ex.Check(f"the rule on {len(batch) - 5} unseen requests", not rest,
                   "the same routes as the rule", f"{len(rest)} differ" + (
                       f", e.g. {batch[rest[0]].text[:60]!r}: {routes[rest[0]]}" if rest else ""),
                   hint="Use every keyword of mr.COMPLEX_KEYWORDS, as a substring of the "
                        "lower-cased text.")


def step_2_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your rules router"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _rules_rows(fn), "rules router",
                     "the rule's edges and the train split, as a router sees them")


# --- Step 3: APGR ---------------------------------------------------------------------------------

def _apgr_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    worst, where = 0.0, ""
    for k in range(100):
        inner = np.sort(rng.uniform(0, 1, int(rng.integers(1, 40))))
        share = np.r_[0.0, inner, 1.0]  # unevenly spaced operating points
        values = np.sort(rng.uniform(0, 1, share.size)) ** rng.uniform(0.3, 3)  # a rising curve
        values[0], values[-1] = 0.0, 1.0
        gap = abs(ex.as_number(fn(share.copy(), values.copy())) - explore.apgr(share, values))
        if gap > worst:
            worst, where = gap, f"curve {k} ({share.size} points)"
    yield ex.Check("area under PGR, by trapezoids", worst <= 1e-9,
                   "within 1e-9 of the trapezoid rule on 100 unseen, unevenly spaced curves",
                   f"largest gap {worst:.3g}" + (f" ({where})" if where else ""),
                   hint="Sum over neighbouring points: (share[i+1] − share[i]) × (pgr[i+1] + "
                        "pgr[i]) / 2. The points are not evenly spaced: an average of the PGR "
                        "values is not the area.")
    share = np.linspace(0, 1, 11) ** 2
    random_router = ex.as_number(fn(share.copy(), share.copy()))
    yield ex.Check("a random router scores 0.5", abs(random_router - 0.5) <= 1e-9,
                   "0.5 for PGR = share (a random router recovers the gap in proportion)",
                   f"{random_router:.4f}", hint="PGR equal to the share of strong calls is the "
                                               "diagonal: its area is one half.")


def step_3_checks(fn: Any, seed: int = 43) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your APGR function"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _apgr_rows(fn, seed), "APGR", "random PGR curves")


# --- Step 4: the threshold from the training split ----------------------------------------------

def _alpha_rows(fn: Callable[..., Any], seed: int) -> Iterator[ex.Check]:
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(50):
        n = int(rng.integers(60, 500))
        is_complex = rng.random(n) < rng.uniform(0.2, 0.5)
        scores = np.clip(np.where(is_complex, rng.beta(5, 2, n), rng.beta(2, 5, n)), 0, 1)
        cases.append((scores, is_complex))
    wrong = ""
    answers = []
    for k, (scores, is_complex) in enumerate(cases):
        alpha = ex.as_number(fn(scores.copy(), is_complex.copy(), CATCH), "a threshold")
        answers.append(alpha)
        want = explore.alpha_for_recall(scores, is_complex, CATCH)
        if abs(alpha - want) > 1e-12 and not wrong:  # the first case that differs
            caught = float(np.mean(scores[is_complex] >= alpha))
            wrong = (f"case {k} ({int(is_complex.sum())} complex of {len(scores)}): α = {alpha:.4f}"
                     f" catches {caught:.1%} of the complex; the largest α that catches ≥ 99% "
                     f"is {want:.4f}")
    yield ex.Check("the largest α that still catches 99% of the complex", not wrong,
                   "exactly that α, on 50 unseen sets of out-of-fold scores", wrong or "all equal",
                   hint="Sort the complex requests' scores; with m = floor(0.01 × their number) "
                        "allowed misses, α is the (m+1)-th smallest: every complex score ≥ α "
                        "goes to large.")
    yield ex.Check("α comes from the scores it is given", len(set(answers)) > 1,
                   "different training scores give different α",
                   f"{len(set(answers))} distinct α over {len(answers)} sets",
                   hint="A fixed α (or one tuned on the test split) ignores the training data: "
                        "compute it from the scores and labels passed in.")


def step_4_checks(fn: Any, seed: int = 47) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your threshold function"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _alpha_rows(fn, seed), "threshold",
                     "random out-of-fold scores and labels")
