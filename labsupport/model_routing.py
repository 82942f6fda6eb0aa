"""Model routing: send each request to a small or a large model, and measure what it costs.

Serves ``notebooks/04_model_routing.ipynb``.

Everything runs offline. The two backends are simulated: each has list prices (with the
date they were read), a latency profile (time to first token plus time per output token)
and a quality model, stated as an assumption: the large model answers every request
correctly; the small one answers every simple request and fails a stated share of the
complex ones. An OpenAI-compatible endpoint named by environment variable may replace
either backend for live calls (:func:`backend_from_env`).

Routers map a batch of requests to ``"small"`` or ``"large"``: rules, a classifier on
all-MiniLM-L6-v2 embeddings (logistic regression, written here in numpy), a random
baseline, the oracle that knows the labels, and a FrugalGPT-style cascade. They are
scored with RouteLLM's metrics (Ong et al., 2024, arXiv:2406.18665): the cost–quality
curve, APGR and CPT.

From the shell: ``python -m labsupport.model_routing`` prints the scenario's numbers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import exercises as ex

EXERCISE_ID = "04_model_routing"
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "routing"
REQUESTS_CSV = DATA_DIR / "requests.csv"
LABELS = ("simple", "complex")
ROUTES = ("small", "large")
DAILY_REQUESTS = 10_000  # the scenario's traffic
SYSTEM_PROMPT_TOKENS = 150  # the assistant's system prompt, sent with every request (tokens)
SMALL_FAILURE_RATE = 0.6  # assumption: share of complex requests the small model gets wrong

log = logging.getLogger(__name__)


# --- the data -----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One assistant request from ``data/routing/requests.csv``."""

    id: str
    text: str
    label: str | None  # "simple" or "complex"; None when hidden from a router
    domain: str  # support, coding, hr, finance, writing, analysis, devops, marketing
    split: str  # "train" or "test"
    prompt_tokens: int  # tokens of the request text (ceil(characters / 4))
    output_tokens: int  # tokens of a typical answer (see the data README)

    @property
    def is_complex(self) -> bool:
        return self.label == "complex"


def load_requests(split: str | None = None, path: Path = REQUESTS_CSV) -> list[Request]:
    """The labelled requests, all of them or one split (``"train"`` / ``"test"``)."""
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', not {split!r}")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [Request(id=r["id"], text=r["text"], label=r["label"], domain=r["domain"],
                        split=r["split"], prompt_tokens=int(r["prompt_tokens"]),
                        output_tokens=int(r["output_tokens"]))
                for r in csv.DictReader(handle)]
    return [r for r in rows if split is None or r.split == split]


def without_labels(requests: Sequence[Request]) -> list[Request]:
    """Copies with the label removed: what a router sees in production."""
    return [replace(r, label=None) for r in requests]


def labels_of(requests: Sequence[Request]) -> np.ndarray:
    """Boolean array, True where the request is complex."""
    return np.array([r.is_complex for r in requests], dtype=bool)


# --- the two backends ---------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A model behind an API: its prices, latency profile and (optional) live endpoint."""

    name: str
    input_usd_per_mtok: float  # USD per million input tokens
    output_usd_per_mtok: float  # USD per million output tokens
    prices_as_of: str  # the date the list prices were read
    ttft_s: float  # time to first token (seconds)
    s_per_output_token: float  # seconds per generated token after the first
    url: str | None = None  # base URL of an OpenAI-compatible API; None = simulated
    model: str | None = None  # model name sent to that API
    api_key: str | None = field(default=None, repr=False)

    def cost_usd(self, prompt_tokens: Any, output_tokens: Any) -> Any:
        """Cost of one call (or of arrays of calls); the system prompt is added here."""
        prompt = np.asarray(prompt_tokens, dtype=float) + SYSTEM_PROMPT_TOKENS
        output = np.asarray(output_tokens, dtype=float)
        return (prompt * self.input_usd_per_mtok + output * self.output_usd_per_mtok) / 1e6

    def latency_s(self, output_tokens: Any) -> Any:
        """Time until the last token: TTFT plus one step per further output token."""
        output = np.asarray(output_tokens, dtype=float)
        return self.ttft_s + np.maximum(output - 1, 0) * self.s_per_output_token


# List prices from https://openai.com/api/pricing/ (standard tier, per 1M tokens):
# gpt-4o-mini $0.15 in / $0.60 out since its launch on 2024-07-18; gpt-4o $2.50 / $10.00
# since gpt-4o pointed to gpt-4o-2024-08-06 (2024-10-02). Prices change: check them.
PRICES_AS_OF = "2024-10-02"
# Latency profiles are assumptions of the same order as public measurements of these
# models; measure your own (notebook 06 shows how).
SMALL = Backend("gpt-4o-mini", 0.15, 0.60, PRICES_AS_OF, ttft_s=0.35, s_per_output_token=0.012)
LARGE = Backend("gpt-4o", 2.50, 10.00, PRICES_AS_OF, ttft_s=0.60, s_per_output_token=0.020)

ENV_URL = "LABSUPPORT_{role}_MODEL_URL"  # role = SMALL or LARGE, e.g. http://127.0.0.1:8080/v1
ENV_NAME = "LABSUPPORT_{role}_MODEL_NAME"
ENV_KEY = "LABSUPPORT_{role}_MODEL_API_KEY"


def backend_from_env(role: str, default: Backend | None = None) -> Backend:
    """The backend for ``role`` ("small" or "large"): the simulated default, or a live
    OpenAI-compatible endpoint when ``LABSUPPORT_SMALL_MODEL_URL`` (or ``…LARGE…``) is set.
    Prices and latency profile stay those of the default: set them to your model's."""
    if role not in ROUTES:
        raise ValueError(f"role must be 'small' or 'large', not {role!r}")
    default = default or (SMALL if role == "small" else LARGE)
    key = role.upper()
    url = os.environ.get(ENV_URL.format(role=key))
    if not url:
        return default
    return replace(default, url=url.rstrip("/"),
                   model=os.environ.get(ENV_NAME.format(role=key), default.name),
                   api_key=os.environ.get(ENV_KEY.format(role=key)))


@dataclass(frozen=True)
class Completion:
    """One answer from a backend, with what it cost and how long it took."""

    backend: str
    text: str
    prompt_tokens: int
    output_tokens: int
    latency_s: float
    cost_usd: float
    simulated: bool


def complete(backend: Backend, request: Request, *, client: Any = None,
             timeout_s: float = 30.0) -> Completion:
    """Answer ``request`` with ``backend``: simulated, or over its OpenAI-compatible API.

    The simulated answer takes no wall time: its latency is the profile's number.
    ``client`` (an ``httpx.Client``) is for tests and connection reuse.
    """
    if backend.url is None:
        out = request.output_tokens
        return Completion(backend.name, f"[simulated {backend.name} answer, {out} tokens]",
                          request.prompt_tokens, out, float(backend.latency_s(out)),
                          float(backend.cost_usd(request.prompt_tokens, out)), simulated=True)
    import httpx  # only live calls need it

    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    body = {"model": backend.model or backend.name,
            "messages": [{"role": "user", "content": request.text}]}
    own = client is None
    client = client or httpx.Client(timeout=timeout_s)
    try:
        start = time.perf_counter()
        response = client.post(f"{backend.url}/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        elapsed = time.perf_counter() - start  # seconds, whole answer (not streamed)
    finally:
        if own:
            client.close()
    data = response.json()
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", request.prompt_tokens))
    out = int(usage.get("completion_tokens", 0))
    text = data["choices"][0]["message"]["content"]
    # The API's prompt count already includes any system prompt: price it as sent.
    cost = (prompt * backend.input_usd_per_mtok + out * backend.output_usd_per_mtok) / 1e6
    return Completion(backend.name, text, prompt, out, elapsed, cost, simulated=False)


# --- the quality model --------------------------------------------------------------


def small_model_fails(requests: Sequence[Request], failure_rate: float = SMALL_FAILURE_RATE,
                      seed: int = 0) -> np.ndarray:
    """Which requests the small model answers wrongly: exactly ``round(rate × complex)``
    complex requests, chosen at random by ``seed``; never a simple one (the assumption)."""
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be in [0, 1], not {failure_rate}")
    complex_idx = np.flatnonzero(labels_of(requests))
    n_fail = round(failure_rate * len(complex_idx))
    chosen = np.random.default_rng(seed).permutation(complex_idx)[:n_fail]
    fails = np.zeros(len(requests), dtype=bool)
    fails[chosen] = True
    return fails


# --- evaluating a routing -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one routing of a request set costs and delivers, scaled to a day's traffic."""

    n_requests: int
    share_large: float  # fraction of requests sent to the large model
    daily_cost_usd: float  # mean cost per request × daily requests
    quality: float  # fraction of requests answered correctly
    mean_latency_s: float
    p95_latency_s: float
    complex_to_small: int  # complex requests the router sent to the small model
    n_complex: int

    def row(self) -> str:
        return (f"{100 * self.share_large:5.1f}% large | ${self.daily_cost_usd:7.2f}/day | "
                f"quality {100 * self.quality:5.1f}% | mean {self.mean_latency_s:5.2f} s | "
                f"p95 {self.p95_latency_s:5.2f} s | complex→small {self.complex_to_small}"
                f"/{self.n_complex}")


def as_large_mask(routes: Any, n: int) -> np.ndarray:
    """Turn a router's output into a boolean array (True = large); reject anything else."""
    if isinstance(routes, np.ndarray) and routes.dtype == bool:
        mask = routes
    else:
        routes = list(routes)
        bad = [r for r in routes if r not in ROUTES]
        if bad:
            raise ValueError(f"a route must be 'small' or 'large'; found {bad[0]!r}")
        mask = np.array([r == "large" for r in routes], dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"expected {n} routes, one per request; got {mask.size}")
    return mask


def evaluate(requests: Sequence[Request], routes: Any, *, small: Backend = SMALL,
             large: Backend = LARGE, daily_requests: int = DAILY_REQUESTS,
             failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Outcome:
    """Cost, quality and latency of sending each request where ``routes`` says."""
    n = len(requests)
    to_large = as_large_mask(routes, n)
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    cost = np.where(to_large, large.cost_usd(prompt, out), small.cost_usd(prompt, out))
    latency = np.where(to_large, large.latency_s(out), small.latency_s(out))
    wrong = ~to_large & small_model_fails(requests, failure_rate, seed)
    is_complex = labels_of(requests)
    return Outcome(n, float(to_large.mean()), float(cost.mean() * daily_requests),
                   float(1 - wrong.mean()), float(latency.mean()),
                   float(np.percentile(latency, 95)), int((is_complex & ~to_large).sum()),
                   int(is_complex.sum()))


# --- routers: each maps a list of requests to a list of "small"/"large" -------------

Router = Callable[[Sequence[Request]], list[str]]


def all_large(requests: Sequence[Request]) -> list[str]:
    """Today's setup: everything to the large model."""
    return ["large"] * len(requests)


def all_small(requests: Sequence[Request]) -> list[str]:
    return ["small"] * len(requests)


def oracle_router(requests: Sequence[Request]) -> list[str]:
    """Knows every label: exactly the complex requests go to the large model."""
    if any(r.label is None for r in requests):
        raise ValueError("the oracle needs labelled requests")
    return ["large" if r.is_complex else "small" for r in requests]


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """A random router's 'probability of complex': uniform noise, blind to the request."""
    return np.random.default_rng(seed).random(n)


# Words that tend to mark a multi-step task. Deliberately imperfect: "write a tweet" is
# simple, "plan our marketing strategy" is short but complex.
COMPLEX_KEYWORDS: tuple[str, ...] = (
    "design", "plan", "strategy", "analyse", "analyze", "build", "compare", "refactor",
    "migrate", "migration", "review", "step by step", "framework", "model", "draft",
    "implement", "create", "develop", "explain how", "evaluate", "audit",
)


def rules_router(requests: Sequence[Request], *, max_simple_tokens: int = 35,
                 keywords: Sequence[str] = COMPLEX_KEYWORDS,
                 large_domains: Sequence[str] = ()) -> list[str]:
    """Large when the prompt is long, contains a keyword, or comes from a listed domain."""
    routes = []
    for r in requests:
        text = r.text.lower()
        hard = (r.prompt_tokens > max_simple_tokens or any(k in text for k in keywords)
                or r.domain in large_domains)
        routes.append("large" if hard else "small")
    return routes


def threshold_routes(scores: np.ndarray, alpha: float) -> np.ndarray:
    """RouteLLM's rule: large when the score (P(complex)) is ≥ α."""
    return np.asarray(scores) >= alpha


# --- embeddings, cached for the kernel ---------------------------------------------

_CACHES: dict[bool, Any] = {}  # use_disk_cache -> the kernel's EmbeddingCache


def embedding_cache_path() -> Path:
    """Where request embeddings persist between kernels (the course cache folder)."""
    from labsupport import embeddings  # cheap: torch is imported only when a model loads

    return embeddings.cache_root() / "routing" / "embeddings.npz"


def _cache(use_disk_cache: bool) -> Any:
    """The kernel's cache of request vectors (labsupport.embeddings.EmbeddingCache)."""
    from labsupport import embeddings

    if use_disk_cache not in _CACHES:
        # keys name the model, so vectors of two models never mix
        model = os.environ.get(embeddings.ENV_MODEL) or embeddings.MODEL_NAME
        _CACHES[use_disk_cache] = (
            embeddings.EmbeddingCache.load(embedding_cache_path(), model=model)
            if use_disk_cache else embeddings.EmbeddingCache(model=model))
    return _CACHES[use_disk_cache]


def embed_requests(requests: Sequence[Request] | Sequence[str], *,
                   use_disk_cache: bool = True) -> np.ndarray:
    """Embeddings (n, 384) of the request texts, each text embedded once.

    Vectors are kept in memory for the kernel (a widget callback or a second Run All reads
    them from there) and in a file under the course cache (a fresh kernel skips the ~10 s
    of embedding the data set; the model is then loaded only if a new text comes).
    """
    texts = [r if isinstance(r, str) else r.text for r in requests]
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return _cache(use_disk_cache).embed(texts)  # loads the model only for unseen texts


# --- logistic regression, small enough to read -------------------------------------


@dataclass
class LogisticRegression:
    """Binary logistic regression with an L2 penalty, fitted by Newton's method.

    Minimises ``Σ log-loss + (l2 / 2)·‖w‖²`` (the bias is not penalised), the same
    objective as scikit-learn's ``LogisticRegression(C=1/l2)``.
    """

    l2: float = 0.1
    max_iter: int = 50
    tol: float = 1e-6  # stop when no parameter moves more than this (Newton: ~8 steps)
    weights: np.ndarray | None = None
    bias: float = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray,
            start: LogisticRegression | None = None) -> LogisticRegression:
        """Fit to rows ``x`` and 0/1 labels ``y``; ``start`` warm-starts from a fitted model
        (cross-validation folds start from the full fit and need fewer steps)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        n, d = x.shape
        xb = np.hstack([x, np.ones((n, 1))])  # last column: the bias
        theta = np.zeros(d + 1)
        if start is not None and start.weights is not None:
            theta = np.r_[start.weights, start.bias]
        penalty = np.full(d + 1, self.l2)
        penalty[-1] = 0.0
        for _ in range(self.max_iter):
            p = _sigmoid(xb @ theta)
            gradient = xb.T @ (p - y) + penalty * theta
            hessian = (xb.T * (p * (1 - p))) @ xb + np.diag(penalty) + 1e-10 * np.eye(d + 1)
            step = np.linalg.solve(hessian, gradient)
            theta -= step
            if np.max(np.abs(step)) < self.tol:
                break
        self.weights, self.bias = theta[:-1], float(theta[-1])
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(class 1) for each row of ``x``."""
        if self.weights is None:
            raise RuntimeError("fit the model first")
        return _sigmoid(np.asarray(x, dtype=float) @ self.weights + self.bias)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), without overflow


@dataclass
class ComplexityClassifier:
    """P(complex) from a request's embedding; trained on the train split only."""

    model: LogisticRegression
    trained_on: frozenset[str]  # request ids seen in training

    def predict_proba(self, requests: Sequence[Request] | Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(embed_requests(requests))

    def router(self, alpha: float) -> Router:
        """A router that sends a request to the large model when P(complex) ≥ α."""
        def route(requests: Sequence[Request]) -> list[str]:
            mask = threshold_routes(self.predict_proba(requests), alpha)
            return ["large" if m else "small" for m in mask]
        return route


def train_classifier(requests: Sequence[Request], l2: float = 0.1) -> ComplexityClassifier:
    """Fit the classifier on labelled *training* requests; test requests are refused."""
    leaked = [r.id for r in requests if r.split == "test"]
    if leaked:
        raise ValueError(f"{len(leaked)} test requests given for training (e.g. {leaked[0]}):"
                         " the test split is for measuring only")
    if any(r.label is None for r in requests):
        raise ValueError("training needs labelled requests")
    model = LogisticRegression(l2=l2).fit(embed_requests(requests), labels_of(requests))
    return ComplexityClassifier(model, frozenset(r.id for r in requests))


def cross_val_scores(requests: Sequence[Request], l2: float = 0.1, folds: int = 5,
                     seed: int = 0) -> np.ndarray:
    """Out-of-fold P(complex) for each training request: scores from models that never
    saw that request, so α can be chosen without touching the test split."""
    x = embed_requests(requests)
    y = labels_of(requests)
    order = np.random.default_rng(seed).permutation(len(requests))
    scores = np.empty(len(requests))
    full = LogisticRegression(l2=l2).fit(x, y)  # a warm start for every fold
    for fold in np.array_split(order, folds):
        keep = np.ones(len(requests), dtype=bool)
        keep[fold] = False
        model = LogisticRegression(l2=l2).fit(x[keep], y[keep], start=full)
        scores[fold] = model.predict_proba(x[fold])
    return scores


# --- the cascade (FrugalGPT's idea) -------------------------------------------------


def small_model_confidence(requests: Sequence[Request], fails: np.ndarray,
                           seed: int = 0) -> np.ndarray:
    """A simulated confidence score for the small model's answer (a scorer/verifier).

    Assumption: right answers score Beta(6, 2) (mean 0.75), wrong ones Beta(2, 3)
    (mean 0.40). The overlap is why a cascade both escalates some right answers and
    keeps some wrong ones.
    """
    rng = np.random.default_rng(seed + 1_000)
    right = rng.beta(6, 2, size=len(requests))
    wrong = rng.beta(2, 3, size=len(requests))
    return np.where(fails, wrong, right)


def evaluate_cascade(requests: Sequence[Request], threshold: float, *,
                     small: Backend = SMALL, large: Backend = LARGE,
                     daily_requests: int = DAILY_REQUESTS,
                     failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Outcome:
    """Try small first; escalate to large when its confidence is below ``threshold``.

    Every request pays for the small call; an escalated one also pays for the large call
    and waits for both, one after the other.
    """
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    fails = small_model_fails(requests, failure_rate, seed)
    escalate = small_model_confidence(requests, fails, seed) < threshold
    cost = small.cost_usd(prompt, out) + np.where(escalate, large.cost_usd(prompt, out), 0.0)
    latency = small.latency_s(out) + np.where(escalate, large.latency_s(out), 0.0)
    wrong = fails & ~escalate
    is_complex = labels_of(requests)
    return Outcome(len(requests), float(escalate.mean()), float(cost.mean() * daily_requests),
                   float(1 - wrong.mean()), float(latency.mean()),
                   float(np.percentile(latency, 95)), int((is_complex & ~escalate).sum()),
                   int(is_complex.sum()))


# --- RouteLLM's metrics -------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """A router's operating points as its threshold sweeps, sorted by share to large."""

    share_large: np.ndarray  # fraction of calls to the strong model, 0 … 1
    quality: np.ndarray
    daily_cost_usd: np.ndarray
    alphas: np.ndarray  # the threshold of each point (inf = nothing to large)


def sweep(requests: Sequence[Request], scores: np.ndarray, *, small: Backend = SMALL,
          large: Backend = LARGE, daily_requests: int = DAILY_REQUESTS,
          failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Curve:
    """Every distinct operating point of ``large if score ≥ α``, from α = ∞ (all small)
    down to the lowest score (all large). Vectorised: one sort, then cumulative sums."""
    scores = np.asarray(scores, dtype=float)
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    extra_cost = large.cost_usd(prompt, out) - small.cost_usd(prompt, out)  # per request
    gain = small_model_fails(requests, failure_rate, seed).astype(float)  # 1 = fixed by large
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    # Only the last index of each run of equal scores is an operating point.
    last = np.r_[s[1:] != s[:-1], True]
    n = len(requests)
    k = np.r_[0, np.flatnonzero(last) + 1]  # number of requests sent to large
    base_cost = small.cost_usd(prompt, out).sum()
    cost = (base_cost + np.r_[0.0, np.cumsum(extra_cost[order])][k]) / n * daily_requests
    quality = 1 - (gain.sum() - np.r_[0.0, np.cumsum(gain[order])][k]) / n
    alphas = np.r_[np.inf, s[last]]
    return Curve(k / n, quality, cost, alphas)


def pgr(quality: Any, weak_quality: float, strong_quality: float) -> Any:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong one's."""
    gap = strong_quality - weak_quality
    if gap <= 0:
        raise ValueError("the strong model must be better than the weak one")
    return (np.asarray(quality, dtype=float) - weak_quality) / gap


def apgr(share_large: Any, pgr_values: Any) -> float:
    """Average PGR: the area under PGR as a function of the share of strong calls, over
    [0, 1] (trapezoids over every operating point)."""
    x = np.asarray(share_large, dtype=float)
    y = np.asarray(pgr_values, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[0] > 0 or x[-1] < 1:
        raise ValueError("the curve must span 0 % to 100 % calls to the strong model")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpt(share_large: Any, pgr_values: Any, target: float = 0.5) -> float:
    """Call-performance threshold: the smallest share of strong calls at which PGR reaches
    ``target`` (linear between measured points). CPT(50 %) of a random router is 0.5."""
    x = np.asarray(share_large, dtype=float)
    y = np.asarray(pgr_values, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    hit = np.flatnonzero(y >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0))


def curve_metrics(curve: Curve) -> dict[str, float]:
    """APGR and CPT(50 %) of a swept curve (weak = all small, strong = all large)."""
    weak, strong = float(curve.quality[0]), float(curve.quality[-1])
    values = pgr(curve.quality, weak, strong)
    return {"apgr": apgr(curve.share_large, values), "cpt50": cpt(curve.share_large, values)}


# --- the explore panel --------------------------------------------------------------


@dataclass
class RoutingLab:
    """Everything the notebook's figure shows, computed once; callbacks only look up."""

    requests: list[Request]
    scores: np.ndarray  # classifier P(complex) on ``requests``
    curve: Curve  # the classifier's sweep
    random_curve: Curve
    cascade: list[Outcome]  # one per cascade threshold
    cascade_thresholds: np.ndarray
    points: dict[str, Outcome]  # all small, all large, oracle, rules

    def at(self, alpha: float) -> Outcome:
        return evaluate(self.requests, threshold_routes(self.scores, alpha))


def build_lab(requests: Sequence[Request], scores: np.ndarray, seed: int = 0) -> RoutingLab:
    """Precompute the curves and reference points for ``requests`` (the test split)."""
    requests = list(requests)
    cascade_t = np.linspace(0.0, 1.0, 41)
    points = {"all small": evaluate(requests, all_small(requests)),
              "all large": evaluate(requests, all_large(requests)),
              "oracle": evaluate(requests, oracle_router(requests)),
              "rules": evaluate(requests, rules_router(requests))}
    return RoutingLab(requests, np.asarray(scores), sweep(requests, scores),
                      sweep(requests, random_scores(len(requests), seed)),
                      [evaluate_cascade(requests, t) for t in cascade_t], cascade_t, points)


def build_figure(lab: RoutingLab, alpha: float = 0.5) -> Any:
    """The cost–quality figure: classifier curve, random line, cascade, reference points,
    and a marker for the operating point at ``alpha`` (the last trace)."""
    from labsupport import plots

    fig = plots.figure("Cost–quality curve on the test split", ("daily cost", "USD/day"),
                       ("quality: requests answered correctly", "%"), height=430)
    fig.add_scatter(x=lab.random_curve.daily_cost_usd, y=100 * lab.random_curve.quality,
                    mode="lines", name="random router", line=dict(dash="dot"))
    fig.add_scatter(x=[o.daily_cost_usd for o in lab.cascade],
                    y=[100 * o.quality for o in lab.cascade], mode="lines",
                    name="cascade (small first)", line=dict(dash="dash"))
    fig.add_scatter(x=lab.curve.daily_cost_usd, y=100 * lab.curve.quality, mode="lines",
                    name="classifier, α swept", line=dict(width=3))
    # Reference points in black, told apart by symbol; the moving marker in vermillion.
    for name, symbol, where in (("all small", "circle", "bottom right"),
                                ("all large", "square", "bottom left"),
                                ("oracle", "star", "top center"),
                                ("rules", "diamond", "bottom left")):
        o = lab.points[name]
        fig.add_scatter(x=[o.daily_cost_usd], y=[100 * o.quality], mode="markers+text",
                        name=name, text=[name], textposition=where,
                        marker=dict(size=11, symbol=symbol, color="#000000"))
    o = lab.at(alpha)
    fig.add_scatter(x=[o.daily_cost_usd], y=[100 * o.quality], mode="markers",
                    name="your α", marker=dict(size=16, color="#D55E00",
                                               line=dict(width=2, color="#000000")))
    low = 100 * float(lab.points["all small"].quality)
    fig.update_yaxes(range=[low - 2, 101.5])
    return fig


def update_figure(fig: Any, lab: RoutingLab, alpha: float) -> str:
    """Widget callback: move the α marker and return the one-line summary."""
    o = lab.at(alpha)
    marker = fig.data[-1]
    if hasattr(fig, "batch_update"):
        with fig.batch_update():
            marker.x, marker.y = [o.daily_cost_usd], [100 * o.quality]
    else:
        marker.x, marker.y = [o.daily_cost_usd], [100 * o.quality]
    return summarise(lab, alpha, o)


def summarise(lab: RoutingLab, alpha: float, o: Outcome | None = None) -> str:
    o = o or lab.at(alpha)
    ref = lab.points["all large"]
    return (f"α = {alpha:.2f}: {100 * o.share_large:.0f}% to large, "
            f"${o.daily_cost_usd:.2f}/day ({100 * (1 - o.daily_cost_usd / ref.daily_cost_usd):.0f}%"
            f" below all-large), quality {100 * o.quality:.1f}%, "
            f"{o.complex_to_small}/{o.n_complex} complex requests sent to small")


# --- a routing gateway: fallback and a log line per decision -------------------------


@dataclass
class RoutingGateway:
    """Route, call, fall back to the other backend on error, and log every decision."""

    router: Router
    backends: dict[str, Backend]
    call: Callable[[Backend, Request], Completion] = complete
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, request: Request) -> Completion:
        route = self.router([request])[0]
        order = [route] + [r for r in ROUTES if r != route]
        errors = []
        for target in order:
            try:
                result = self.call(self.backends[target], request)
            except Exception as exc:  # noqa: BLE001 - any backend failure triggers the fallback
                errors.append(f"{target}: {type(exc).__name__}: {exc}")
                continue
            self._log(request, route, target, errors, result)
            return result
        self._log(request, route, None, errors, None)
        raise RuntimeError(f"all backends failed for {request.id}: {'; '.join(errors)}")

    def _log(self, request: Request, route: str, served_by: str | None, errors: list[str],
             result: Completion | None) -> None:
        entry = {"request": request.id,
                 "text_sha1": hashlib.sha1(request.text.encode()).hexdigest()[:10],
                 "routed_to": route, "served_by": served_by, "fallback": served_by != route,
                 "errors": list(errors),
                 "cost_usd": None if result is None else round(result.cost_usd, 6),
                 "latency_s": None if result is None else round(result.latency_s, 3)}
        self.decisions.append(entry)
        log.info("routing %s", entry)


# --- the scenario exercise ----------------------------------------------------------

REPORT_KEYS = ("all_large_daily_cost_usd", "all_large_mean_latency_s",
               "all_large_p95_latency_s", "daily_cost_usd", "saving_usd",
               "mean_latency_s", "p95_latency_s")
MAX_COST_VS_ORACLE = 1.15  # the router's daily cost may be at most 15 % above the oracle's
MIN_QUALITY_VS_LARGE = 0.97
MAX_COMPLEX_TO_SMALL = 0.05
CHECK_SEEDS = (0, 1, 2, 3, 4)  # which complex requests the small model fails: 5 draws
REPORT_TOLERANCE = 0.01  # reported numbers within 1 %


def reference_report(routes: Any, requests: Sequence[Request]) -> dict[str, float]:
    """The numbers the exercise asks for, for ``routes`` on ``requests``."""
    base = evaluate(requests, all_large(requests))
    mine = evaluate(requests, routes)
    return {"all_large_daily_cost_usd": base.daily_cost_usd,
            "all_large_mean_latency_s": base.mean_latency_s,
            "all_large_p95_latency_s": base.p95_latency_s,
            "daily_cost_usd": mine.daily_cost_usd,
            "saving_usd": base.daily_cost_usd - mine.daily_cost_usd,
            "mean_latency_s": mine.mean_latency_s, "p95_latency_s": mine.p95_latency_s}


def _checks(answer: Any) -> list[ex.Check]:
    if not isinstance(answer, dict) or "router" not in answer:
        return [ex.Check("answer is a dict with 'router' and 'report'", False,
                         "{'router': my_router, 'report': my_report}",
                         f"{type(answer).__name__} {answer!r:.60}",
                         hint="Leave the last line of the starter cell as it is.")]
    bad = ex.expect_callable(answer["router"], "your router")
    if bad:
        return [bad]
    test = load_requests("test")
    hidden = without_labels(test)  # the router never sees a label
    routes = answer["router"](hidden)
    mask = as_large_mask(routes, len(test))
    oracle = evaluate(test, oracle_router(test))
    mine = evaluate(test, mask)
    base = evaluate(test, all_large(test))
    checks = []

    ratio = mine.daily_cost_usd / oracle.daily_cost_usd
    checks.append(ex.Check(
        "daily cost close to the oracle's", ratio <= MAX_COST_VS_ORACLE,
        f"≤ {MAX_COST_VS_ORACLE:.0%} of the oracle's ${oracle.daily_cost_usd:.2f}/day",
        f"${mine.daily_cost_usd:.2f}/day = {ratio:.0%} of the oracle "
        f"({100 * mine.share_large:.0f}% of requests to large; oracle "
        f"{100 * oracle.share_large:.0f}%)",
        hint="Too many simple requests go to the large model: raise α, or look at which "
             "simple requests your router sends to large."))

    qualities = [evaluate(test, mask, seed=s).quality for s in CHECK_SEEDS]
    worst = min(qualities)
    worst_seed = CHECK_SEEDS[int(np.argmin(qualities))]
    checks.append(ex.Check(
        "quality vs all-large", worst >= MIN_QUALITY_VS_LARGE * base.quality,
        f"≥ {MIN_QUALITY_VS_LARGE:.0%} of all-large ({100 * base.quality:.0f}%) "
        f"for each of {len(CHECK_SEEDS)} draws of the small model's failures",
        f"worst {100 * worst:.1f}% (draw {worst_seed}), best {100 * max(qualities):.1f}%",
        hint="Complex requests sent to the small model lose quality: lower α."))

    share = mine.complex_to_small / mine.n_complex
    checks.append(ex.Check(
        "complex requests sent to small", share <= MAX_COMPLEX_TO_SMALL,
        f"≤ {MAX_COMPLEX_TO_SMALL:.0%} of {mine.n_complex} complex requests",
        f"{mine.complex_to_small} of {mine.n_complex} ({share:.1%})",
        hint="Look at the complex requests your router sends to small: are they short? "
             "Does a keyword rule or a lower α catch them?"))

    checks.append(_report_check(answer.get("report"), reference_report(mask, test)))
    return checks


def _report_check(report: Any, expected: dict[str, float]) -> ex.Check:
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


def main(argv: list[str] | None = None) -> int:
    """Print the scenario's baseline, oracle and rules numbers (no model needed)."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport.model_routing",
        description="Print cost, quality and latency of four routers (all large, all small, "
                    "the oracle, the rules) on the scenario's labelled requests. Offline: "
                    "the backends are simulated and no embedding model is loaded.")
    parser.add_argument("--split", choices=("train", "test"), default="test",
                        help="which labelled requests to evaluate (default: %(default)s)")
    args = parser.parse_args(argv)
    requests = load_requests(args.split)
    for name, routes in (("all large", all_large(requests)), ("all small", all_small(requests)),
                         ("oracle", oracle_router(requests)), ("rules", rules_router(requests))):
        print(f"{name:10s} {evaluate(requests, routes).row()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
