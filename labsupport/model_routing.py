"""Model routing, for ``notebooks/04_model_routing.ipynb``: two simulated backends, routers
(rules, a classifier on all-MiniLM-L6-v2 embeddings, random, oracle), a gateway with fallback."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REQUESTS_CSV = Path(__file__).resolve().parents[1] / "data" / "routing" / "requests.csv"
LABELS = ("simple", "complex")
ROUTES = ("small", "large")
DAILY_REQUESTS = 10_000  # the scenario's traffic
SYSTEM_PROMPT_TOKENS = 150  # the assistant's system prompt, sent with every request (tokens)
SMALL_FAILURE_RATE = 0.6  # assumption: share of complex requests the small model gets wrong

Router = Callable[[Sequence["RouterRequest"]], list[str]]  # -> "small" or "large" for each
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One assistant request from ``data/routing/requests.csv``."""
    id: str
    text: str
    label: str  # "simple" or "complex"
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
        rows = [Request(r["id"], r["text"], r["label"], r["domain"], r["split"],
                        int(r["prompt_tokens"]), int(r["output_tokens"]))
                for r in csv.DictReader(handle)]
    return [r for r in rows if split is None or r.split == split]


@dataclass(frozen=True, slots=True)
class RouterRequest:
    """What a router sees at request time: no label, answer length or id (slots: no more)."""
    text: str
    prompt_tokens: int  # ceil(characters / 4), as the gateway counts it before the call
    domain: str  # which part of the product sent it


def router_view(requests: Sequence[Request]) -> list[RouterRequest]:
    """Fresh copies holding only what a router may see: what every router here is given."""
    return [RouterRequest(r.text, r.prompt_tokens, r.domain) for r in requests]


def labels_of(requests: Sequence[Request]) -> np.ndarray:
    """Boolean array, True where the request is complex."""
    return np.array([r.is_complex for r in requests], dtype=bool)


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


# List prices (standard tier, USD per 1M tokens, https://openai.com/api/pricing/) as of the date
# below; they change: check them. Latency profiles are assumptions: measure your own (see 06).
PRICES_AS_OF = "2024-10-02"
SMALL = Backend("gpt-4o-mini", 0.15, 0.60, PRICES_AS_OF, ttft_s=0.35, s_per_output_token=0.012)
LARGE = Backend("gpt-4o", 2.50, 10.00, PRICES_AS_OF, ttft_s=0.60, s_per_output_token=0.020)


def backend_from_env(role: str, default: Backend | None = None) -> Backend:
    """The simulated backend for ``role``, or a live OpenAI-compatible endpoint if
    ``LABSUPPORT_SMALL_MODEL_URL`` (or ``…LARGE…``) is set. Set its prices to your model's."""
    if role not in ROUTES:
        raise ValueError(f"role must be 'small' or 'large', not {role!r}")
    default = default or (SMALL if role == "small" else LARGE)
    prefix = f"LABSUPPORT_{role.upper()}_MODEL_"  # + URL (http://127.0.0.1:8080/v1), NAME, API_KEY
    url = os.environ.get(prefix + "URL")
    if not url:
        return default
    return replace(default, url=url.rstrip("/"), api_key=os.environ.get(prefix + "API_KEY"),
                   model=os.environ.get(prefix + "NAME", default.name))


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
    """Answer ``request`` with ``backend``: simulated (no wall time; the latency is the profile's),
    or over its OpenAI-compatible API. ``client``: an ``httpx.Client`` (tests, connection reuse)."""
    if backend.url is None:
        out = request.output_tokens
        return Completion(backend.name, f"[simulated {backend.name} answer, {out} tokens]",
                          request.prompt_tokens, out, float(backend.latency_s(out)),
                          float(backend.cost_usd(request.prompt_tokens, out)), simulated=True)
    import httpx  # only live calls need it
    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    body = {"model": backend.model or backend.name,
            "messages": [{"role": "user", "content": request.text}]}
    with nullcontext(client) if client is not None else httpx.Client(timeout=timeout_s) as http:
        start = time.perf_counter()
        response = http.post(f"{backend.url}/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        elapsed = time.perf_counter() - start  # seconds, whole answer (not streamed)
    data = response.json()
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", request.prompt_tokens))  # system prompt included
    out = int(usage.get("completion_tokens", 0))
    cost = (prompt * backend.input_usd_per_mtok + out * backend.output_usd_per_mtok) / 1e6
    return Completion(backend.name, data["choices"][0]["message"]["content"], prompt, out,
                      elapsed, cost, simulated=False)


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


@dataclass(frozen=True)
class Outcome:
    """What one routing of a request set costs and delivers, scaled to a day's traffic."""
    n_requests: int
    share_large: float  # fraction of requests sent to the large model
    daily_cost_usd: float  # mean cost per request × daily requests
    quality: float  # fraction of requests answered correctly
    mean_latency_s: float
    p95_latency_s: float
    p50_latency_s: float
    p99_latency_s: float
    complex_to_small: int  # complex requests the router sent to the small model
    n_complex: int


def as_large_mask(routes: Any, n: int) -> np.ndarray:
    """Turn a router's output into a boolean array (True = large); reject anything else."""
    if not (isinstance(routes, np.ndarray) and routes.dtype == bool):
        routes = list(routes)
        bad = [r for r in routes if r not in ROUTES]
        if bad:
            raise ValueError(f"a route must be 'small' or 'large'; found {bad[0]!r}")
        routes = np.array([r == "large" for r in routes], dtype=bool)
    if routes.shape != (n,):
        raise ValueError(f"expected {n} routes, one per request; got {routes.size}")
    return routes


def evaluate(requests: Sequence[Request], routes: Any, *, small: Backend = SMALL,
             large: Backend = LARGE, daily_requests: int = DAILY_REQUESTS,
             failure_rate: float = SMALL_FAILURE_RATE, seed: int = 0) -> Outcome:
    """Cost, quality and latency of sending each request where ``routes`` says."""
    to_large = as_large_mask(routes, len(requests))
    prompt = np.array([r.prompt_tokens for r in requests])
    out = np.array([r.output_tokens for r in requests])
    cost = np.where(to_large, large.cost_usd(prompt, out), small.cost_usd(prompt, out))
    latency = np.where(to_large, large.latency_s(out), small.latency_s(out))
    wrong = ~to_large & small_model_fails(requests, failure_rate, seed)
    is_complex = labels_of(requests)
    p50, p95, p99 = np.percentile(latency, [50, 95, 99])
    return Outcome(len(requests), float(to_large.mean()), float(cost.mean() * daily_requests),
                   float(1 - wrong.mean()), float(latency.mean()), float(p95), float(p50),
                   float(p99), int((is_complex & ~to_large).sum()), int(is_complex.sum()))


def all_large(requests: Sequence[Any]) -> list[str]:
    """Today's setup: everything to the large model."""
    return ["large"] * len(requests)


def all_small(requests: Sequence[Any]) -> list[str]:
    return ["small"] * len(requests)


def oracle_router(requests: Sequence[Request]) -> list[str]:
    """Knows every label: exactly the complex requests go to the large model."""
    return ["large" if r.is_complex else "small" for r in requests]  # Request objects only


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """A random router's 'probability of complex': uniform noise, blind to the request."""
    return np.random.default_rng(seed).random(n)


# Words that tend to mark a multi-step task. Deliberately imperfect: "write a tweet" is
# simple, "plan our marketing strategy" is short but complex.
COMPLEX_KEYWORDS: tuple[str, ...] = (
    "design", "plan", "strategy", "analyse", "analyze", "build", "compare", "refactor", "migrate",
    "migration", "review", "step by step", "framework", "model", "draft", "implement", "create",
    "develop", "explain how", "evaluate", "audit")


def rules_router(requests: Sequence[RouterRequest], *, max_simple_tokens: int = 35,
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


_CACHES: dict[bool, Any] = {}  # use_disk_cache -> the kernel's embeddings.EmbeddingCache


def embed_requests(requests: Sequence[Request] | Sequence[str], *,
                   use_disk_cache: bool = True) -> np.ndarray:
    """Embeddings (n, 384) of the texts, each embedded once: kept for the kernel and in the
    course cache (a fresh kernel skips the ~10 s of embedding the data set)."""
    from labsupport import embeddings  # cheap: torch is imported only when a model loads
    texts = [r if isinstance(r, str) else r.text for r in requests]
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    if use_disk_cache not in _CACHES:  # keys name the model: two models' vectors never mix
        model = os.environ.get(embeddings.ENV_MODEL) or embeddings.MODEL_NAME
        path = embeddings.derived_cache_root() / "routing" / "embeddings.npz"  # the course cache
        _CACHES[use_disk_cache] = (embeddings.EmbeddingCache.load(path, model=model)
                                   if use_disk_cache else embeddings.EmbeddingCache(model=model))
    return _CACHES[use_disk_cache].embed(texts)  # loads the model only for unseen texts


@dataclass
class LogisticRegression:
    """Binary logistic regression with an L2 penalty, fitted by Newton's method: minimises
    ``Σ log-loss + (l2 / 2)·‖w‖²`` (bias not penalised), like scikit-learn's ``C=1/l2``."""
    l2: float = 0.1
    max_iter: int = 50
    tol: float = 1e-6  # stop when no parameter moves more than this (Newton: ~8 steps)
    weights: np.ndarray | None = None
    bias: float = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray,
            start: LogisticRegression | None = None) -> LogisticRegression:
        """Fit to rows ``x`` and 0/1 labels ``y``; ``start`` warm-starts from a fitted model."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        n, d = x.shape
        xb = np.hstack([x, np.ones((n, 1))])  # last column: the bias
        warm = start is not None and start.weights is not None
        theta = np.r_[start.weights, start.bias] if warm else np.zeros(d + 1)
        penalty = np.r_[np.full(d, self.l2), 0.0]  # the bias is not penalised
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

    def predict_proba(self, requests: Sequence[RouterRequest | Request] | Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(embed_requests(requests))

    def router(self, alpha: float) -> Router:
        """A router that sends a request to the large model when P(complex) ≥ α."""
        def route(requests: Sequence[RouterRequest]) -> list[str]:
            mask = threshold_routes(self.predict_proba(requests), alpha)
            return ["large" if m else "small" for m in mask]
        return route


def train_classifier(requests: Sequence[Request], l2: float = 0.1) -> ComplexityClassifier:
    """Fit the classifier on labelled *training* requests; test requests are refused."""
    if not all(isinstance(r, Request) for r in requests):
        raise ValueError("training needs labelled requests (mr.Request, not what a router sees)")
    leaked = [r.id for r in requests if r.split == "test"]
    if leaked:
        raise ValueError(f"{len(leaked)} test requests given for training (e.g. {leaked[0]}):"
                         " the test split is for measuring only")
    model = LogisticRegression(l2=l2).fit(embed_requests(requests), labels_of(requests))
    return ComplexityClassifier(model, frozenset(r.id for r in requests))


def cross_val_scores(requests: Sequence[Request], l2: float = 0.1, folds: int = 5,
                     seed: int = 0) -> np.ndarray:
    """Out-of-fold P(complex) for each training request: scores from models that never
    saw that request, so α can be chosen without touching the test split."""
    x, y = embed_requests(requests), labels_of(requests)
    order = np.random.default_rng(seed).permutation(len(requests))
    scores = np.empty(len(requests))
    full = LogisticRegression(l2=l2).fit(x, y)  # a warm start for every fold
    for fold in np.array_split(order, folds):
        keep = np.ones(len(requests), dtype=bool)
        keep[fold] = False
        model = LogisticRegression(l2=l2).fit(x[keep], y[keep], start=full)
        scores[fold] = model.predict_proba(x[fold])
    return scores


@dataclass
class RoutingGateway:
    """Route, call, fall back to the other backend on error, and log every decision."""
    router: Router
    backends: dict[str, Backend]
    call: Callable[[Backend, Request], Completion] = complete
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def handle(self, request: Request) -> Completion:
        route = self.router(router_view([request]))[0]  # the router sees only the text
        errors: list[str] = []
        for target in [route] + [r for r in ROUTES if r != route]:  # the routed one first
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
