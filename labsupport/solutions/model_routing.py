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


def choose_alpha(train: Sequence[mr.Request], target_recall: float = TARGET_RECALL) -> float:
    """The largest α whose out-of-fold recall on complex training requests ≥ target."""
    scores = mr.cross_val_scores(train)
    complex_scores = np.sort(scores[mr.labels_of(train)])
    # Sending P ≥ α to large catches every complex score at or above α.
    allowed_misses = int(np.floor((1 - target_recall) * len(complex_scores)))
    return float(complex_scores[allowed_misses])


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
    routes = router(mr.without_labels(test))
    return {"router": router, "report": checks.reference_report(routes, test)}
