"""Reference solution (answer key) for the scenario exercise of 04_model_routing.ipynb.

The router: the embedding classifier trained on the train split, with α chosen on the
train split alone (out-of-fold scores, so the test split stays unseen): the largest α
that still catches 99 % of the complex training requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labsupport import model_routing as mr
from labsupport.checks import model_routing as checks

TARGET_RECALL = 0.99  # share of complex training requests that must go to the large model


# --- Step 1: the cost of a request ------------------------------------------------------------

def cost(backend: mr.Backend, prompt_tokens: int, output_tokens: int) -> float:
    input_tokens = prompt_tokens + mr.SYSTEM_PROMPT_TOKENS  # the system prompt is sent every time
    return (input_tokens * backend.input_usd_per_mtok
            + output_tokens * backend.output_usd_per_mtok) / 1e6  # USD


# --- Step 2: the rules router -------------------------------------------------------------------

def rules_router(batch: Sequence[mr.RouterRequest]) -> list[str]:
    routes = []
    for r in batch:
        text = r.text.lower()
        hard = r.prompt_tokens > 35 or any(k in text for k in mr.COMPLEX_KEYWORDS)
        routes.append("large" if hard else "small")
    return routes


# --- Step 3: APGR ---------------------------------------------------------------------------------

def apgr(share: np.ndarray, pgr_values: np.ndarray) -> float:
    return float(np.sum(np.diff(share) * (pgr_values[1:] + pgr_values[:-1]) / 2))  # trapezoids


# --- Step 4: the threshold, from out-of-fold training scores ---------------------------------------

def alpha_for_recall(scores: np.ndarray, is_complex: np.ndarray, catch: float) -> float:
    complex_scores = np.sort(scores[is_complex])
    allowed_misses = int(np.floor((1 - catch) * len(complex_scores) + 1e-9))
    return float(complex_scores[allowed_misses])  # every complex score at or above it is caught


# --- The scenario ---------------------------------------------------------------------------------

def choose_alpha(train: Sequence[mr.Request], target_recall: float = TARGET_RECALL) -> float:
    """The largest α whose out-of-fold recall on complex training requests ≥ target."""
    return alpha_for_recall(mr.cross_val_scores(train), mr.labels_of(train), target_recall)


def build_router() -> tuple[mr.Router, float]:
    """Train on the train split and return the router with its α."""
    train = mr.load_requests("train")
    classifier = mr.train_classifier(train)
    alpha = choose_alpha(train)
    return classifier.router(alpha), alpha


def build_answer() -> dict[str, Any]:
    """The exercise's answer: the router and the report on the test split."""
    router, _ = build_router()
    test = mr.load_requests("test")
    routes = router(mr.router_view(test))
    return {"router": router, "report": checks.reference_report(routes, test)}


# --- The review quiz --------------------------------------------------------------------

QUIZ_ANSWERS = {"test-set": 1, "apgr-random": 0, "request-cost": 4.625, "cascade-latency": 2,
                "leak": 1}
