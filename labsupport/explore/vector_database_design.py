"""Explore and measure for ``07_vector_database_design.ipynb``: figures, widgets, trade-offs.

Built on the mechanism in ``labsupport.vector_database_design`` (``vdb``):

* the questions by topic (the relevance labels for recall and precision), a keyword
  search (the "meaning, not words" baseline), and the careless shared collection with
  :func:`leaks` to show the bug;
* index versus scan: recall@k of Chroma's HNSW against exact numpy search, and queries
  per second, over ``ef_search`` (the Pareto frontier);
* pre- versus post-filtering, measured on Chroma and as a numpy-only widget panel;
* embedding consistency: wrong embedders (CLS pooling: same length, wrong space; cut to
  256: wrong length) and the collapse of topic precision they cause.

Chroma 1.5 facts used here (read from the installed package and checked in the tests):
``collection.modify`` refuses ``space`` and ``ef_construction``; it changes ``ef_search``
(and threading and batching knobs), and a local Chroma (embedded or ``chroma run``) applies
the new ``ef_search`` only when it next loads the index (a new process): its Rust segment
manager caches the loaded HNSW index with the ``ef_search`` it was opened with. The sweep
here therefore sets ``ef_search`` when each collection is created.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import vector_database_design as vdb

# Questions a user asks, by topic: the relevance labels for recall and precision.
TOPIC_QUESTIONS: dict[str, list[str]] = {
    "password_reset": ["How do I reset my password?", "I forgot my login",
                       "My account is locked, how do I get back in?"],
    "expenses": ["How do I get my money back for a work lunch?",
                 "Where do I file receipts for reimbursement?"],
    "incident_response": ["Our system is down for customers, what do I do?",
                          "I think we were hacked, who do I tell?"],
    "onboarding": ["What happens in my first week?", "I am a new hire, where do I start?"],
    "vpn": ["I cannot connect from home", "How do I access internal systems remotely?"],
    "travel": ["Can I fly business class to a conference?", "How do I book a work trip?"],
    "leave": ["How many vacation days do I get?", "I am sick today, who do I tell?"],
    "hardware": ["My laptop screen is broken", "Can I get a second monitor?"],
    "on_call": ["I got paged at 3am, what now?", "How fast must I answer an alert?"],
    "data_retention": ["How long do we keep customer data?",
                       "A customer wants their data deleted"],
    "procurement": ["How do I buy software from a new vendor?", "Do I need a purchase order?"],
    "office": ["Can I bring a visitor to the office?", "How do I book a meeting room?"],
}


# --- shipped vectors: the documents and questions, embedded once --------------------------

SEED_PATH = vdb.DATA_DIR / "embeddings_seed.npz"


def _seed_texts() -> list[str]:
    docs = vdb.load_documents()
    return [d.title + ". " + d.text for d in docs] + [q for qs in TOPIC_QUESTIONS.values()
                                                      for q in qs]


def write_seed(path: Path = SEED_PATH) -> int:
    """Embed the documents and topic questions with the course model and save them, with
    the model's probe: ``python -c "from labsupport.explore import vector_database_design
    as e; e.write_seed()"``."""
    embedder, texts = vdb.course_embedder(), _seed_texts()
    np.savez_compressed(path, texts=np.array(texts), vectors=embedder.encode(texts),
                        probe=np.array(embedder.probe))
    return len(texts)


def load_seed(embedder: vdb.Embedder, path: Path = SEED_PATH) -> int:
    """Put the shipped vectors in the embedder's cache (embedding 336 documents takes
    about 4 s on two cores), if they were made by an embedder that computes what this one
    does (its probe). Returns how many were loaded (0: not this model, or no file)."""
    if not path.exists():
        return 0
    with np.load(path) as data:
        probe, texts, vectors = data["probe"], [str(t) for t in data["texts"]], data["vectors"]
    if len(probe) != len(embedder.probe) or np.abs(probe - embedder.probe).max() > vdb.PROBE_TOLERANCE:
        return 0
    key = embedder.fingerprint
    vdb._ENCODE_CACHE.update({(key, t): v for t, v in zip(texts, vectors, strict=True)})
    return len(texts)


# --- meaning, not words; the careless shared collection -------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the i my me we our you your do does how what who when where is are "
                  "to of for in on at it can get and or be with from i'm am".split())


def keyword_top_k(docs: Sequence[vdb.Document], query: str, k: int) -> list[int]:
    """Indices of the ``k`` documents sharing the most words with ``query`` (no meaning)."""
    words = set(_WORD.findall(query.lower())) - _STOP
    scores = [len(words & set(_WORD.findall((d.title + " " + d.text).lower()))) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    return [i for i in order[:k] if scores[i] > 0]


def shared_collection(location: vdb.Location, docs: Sequence[vdb.Document],
                      embedder: vdb.Embedder, name: str = "everyone-shared",
                      hnsw: dict[str, int] | None = None) -> Any:
    """All tenants' documents in one collection, ids as in the files: the careless design."""
    collection = vdb.open_collection(location.client(), name, embedder, hnsw=hnsw)
    vectors = embedder([d.title + ". " + d.text for d in docs])
    collection.upsert(ids=[d.id for d in docs], embeddings=vectors.tolist(),
                      documents=[d.text for d in docs], metadatas=[d.metadata() for d in docs])
    return collection


def leaks(hits: Sequence[Any], tenant: str) -> list[Any]:
    """The hits (:class:`vdb.Hit` or document id) that belong to another tenant."""
    out = []
    for h in hits:
        owner = h.tenant if isinstance(h, vdb.Hit) else str(h).split("-", 1)[0]
        if owner != tenant:
            out.append(h)
    return out


# --- embedding consistency: the silent failure ----------------------------------------


def _cls_encode(texts: list[str]) -> np.ndarray:
    from labsupport import embeddings

    # The same network, but the vector of the [CLS] token instead of the mean of all
    # tokens: same dimension, a different (untrained for this) vector space.
    tokens = embeddings.get_model().encode(texts, output_value="token_embeddings",
                                           convert_to_numpy=False, show_progress_bar=False)
    vectors = np.stack([t[0].float().cpu().numpy() for t in tokens])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@functools.cache
def cls_pooling_embedder() -> vdb.Embedder:
    """The course model with CLS pooling: 384 dimensions like the real one, wrong space."""
    base = vdb.course_embedder()
    return vdb.Embedder(base.name + "+cls-pooling", base.dimension, _cls_encode)


@functools.cache
def impostor_embedder() -> vdb.Embedder:
    """CLS pooling under the course model's own name and dimension: a name-only guard
    lets it through; a guard that compares what the embedders compute does not."""
    base = vdb.course_embedder()
    return vdb.Embedder(base.name, base.dimension, _cls_encode)


@functools.cache
def truncated_embedder(dimension: int = 256) -> vdb.Embedder:
    """The course model cut to its first ``dimension`` components: the wrong length."""
    base = vdb.course_embedder()

    def encode(texts: list[str]) -> np.ndarray:
        cut = base(texts)[:, :dimension]
        return cut / np.linalg.norm(cut, axis=1, keepdims=True)

    return vdb.Embedder(f"{base.name}[:{dimension}]", dimension, encode)


def topic_precision(docs: Sequence[vdb.Document], doc_vectors: np.ndarray,
                    query_vectors: np.ndarray, topics: Sequence[str], k: int = 5,
                    tenant: str | None = None) -> float:
    """Mean share of the top ``k`` that is on the query's topic (within ``tenant``)."""
    mask = None if tenant is None else np.array([d.tenant == tenant for d in docs])
    scores = []
    for q, topic in zip(query_vectors, topics, strict=True):
        idx, _ = vdb.exact_top_k(doc_vectors, q, k, mask)
        scores.append(np.mean([docs[i].topic == topic for i in idx]))
    return float(np.mean(scores))


def pooling_collapse(docs: Sequence[vdb.Document], k: int = 5) -> dict[str, float]:
    """Documents embedded with mean pooling, queried with mean vs CLS pooling."""
    right, wrong = vdb.course_embedder(), cls_pooling_embedder()
    doc_vectors = right([d.title + ". " + d.text for d in docs])
    pairs = [(t, q) for t, qs in TOPIC_QUESTIONS.items() for q in qs]
    topics, texts = [t for t, _ in pairs], [q for _, q in pairs]
    good, bad = right(texts), wrong(texts)
    truth = [vdb.exact_top_k(doc_vectors, q, k)[1] for q in good]
    # the distances of what the CLS queries found, measured in the true (mean-pooling) space
    bad_found = [vdb.cosine_distances(doc_vectors, good[i])[vdb.exact_top_k(doc_vectors, b, k)[0]]
                 for i, b in enumerate(bad)]
    return {"topic_precision_mean_pooling": topic_precision(docs, doc_vectors, good, topics, k),
            "topic_precision_cls_pooling": topic_precision(docs, doc_vectors, bad, topics, k),
            "recall_cls_vs_exact": float(np.mean(
                [vdb.recall_at_k(f, t, k) for f, t in zip(bad_found, truth, strict=True)]))}


# --- index versus scan: the ef_search sweep -------------------------------------------


DOCSTRINGS = vdb.DATA_DIR.parent / "docstrings"  # real text and its MiniLM vectors


def docstring_vectors() -> tuple[list[str], np.ndarray]:
    """5,000 paragraphs of the standard library's docstrings and their all-MiniLM-L6-v2
    vectors (unit length, shipped as float16; ``data/docstrings/build.py`` made them)."""
    import json

    with (DOCSTRINGS / "texts.jsonl").open() as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    with np.load(DOCSTRINGS / "minilm.npz") as data:
        vectors = data["vectors"].astype(np.float32)
    return texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_vectors(n: int, dimension: int = 384, clusters: int = 50,
                      spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors around ``clusters`` random centres: a stand-in for a large corpus
    (embedding tens of thousands of real texts would take minutes on two cores)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dimension)) * spread / np.sqrt(dimension) * 3
    vectors = centres[rng.integers(0, clusters, n)] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def random_unit_vectors(n: int, dimension: int = 384, seed: int = 0) -> np.ndarray:
    """``n`` random directions in ``dimension`` dimensions: no structure at all, the
    hardest data for a graph index (every vector is about as far as any other)."""
    vectors = np.random.default_rng(seed).standard_normal((n, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill_vector_collection(client: Any, name: str, vectors: np.ndarray,
                           hnsw: dict[str, int] | None = None) -> Any:
    """A cosine collection of bare vectors (ids ``v0``…), created once per name."""
    dim = vectors.shape[1]
    embedder = vdb.Embedder(f"vectors-{dim}d", dim,  # records the space: stored vectors only
                            lambda texts: np.full((len(texts), dim), dim ** -0.5))
    collection = vdb.open_collection(client, name, embedder, hnsw=hnsw)
    if collection.count() != len(vectors):
        batch = 500  # rows a write: small writes keep the kernel's peak memory ~40 MB lower
        for start in range(0, len(vectors), batch):
            part = vectors[start:start + batch]
            collection.upsert(ids=[f"v{i}" for i in range(start, start + len(part))],
                              embeddings=part)
    return collection


@dataclass(frozen=True)
class SweepPoint:
    method: str
    ef_search: int | None
    recall: float  # mean ANN-Benchmarks recall@k
    qps: float  # queries per second, one query at a time


def exact_search_point(vectors: np.ndarray, queries: np.ndarray, k: int,
                       runs: int = 3) -> SweepPoint:
    """Brute-force numpy search, one query at a time: recall 1 by definition. QPS is the
    best of ``runs`` passes, as ANN-Benchmarks reports it (less noise from a busy CPU)."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for q in queries:
            vdb.exact_top_k(vectors, q, k)
        best = min(best, time.perf_counter() - started)  # seconds
    return SweepPoint("exact (numpy)", None, 1.0, len(queries) / best)


def measure_search(collection: Any, queries: np.ndarray, truth: Sequence[np.ndarray], k: int,
                   label: str = "Chroma HNSW", ef_search: int | None = None,
                   runs: int = 3) -> SweepPoint:
    """Mean recall@k against ``truth`` (exact distances) and queries per second, one query
    at a time as in ANN-Benchmarks; QPS is the best of ``runs`` passes."""
    collection.query(query_embeddings=[queries[0].tolist()], n_results=k)  # warm up: load
    best = float("inf")
    for _ in range(runs):
        found = []
        started = time.perf_counter()
        for q in queries:
            found.append(collection.query(query_embeddings=[q.tolist()], n_results=k,
                                          include=["distances"])["distances"][0])
        best = min(best, time.perf_counter() - started)  # seconds
    recall = float(np.mean([vdb.recall_at_k(f, t, k)
                            for f, t in zip(found, truth, strict=True)]))
    return SweepPoint(label, ef_search, recall, len(queries) / best)


def sweep_table(points: Sequence[SweepPoint], k: int) -> Any:
    """Sweep points (:func:`exact_search_point`, :func:`sweep_ef_search`) as a table."""
    from labsupport import plots

    return plots.Table([{"method": p.method, "ef_search": p.ef_search, f"recall@{k}": p.recall,
                         "queries per second": p.qps} for p in points],
                       formats={f"recall@{k}": ".3f", "queries per second": ",.0f"})


def sweep_collection_name(prefix: str, ef: int) -> str:
    return f"{prefix}-ef{int(ef)}"


def sweep_ef_search(client: Any, vectors: np.ndarray, queries: np.ndarray, k: int = 10,
                    ef_values: Sequence[int] = (10, 20, 40, 80, 160, 320),
                    prefix: str = "sweep", hnsw: dict[str, int] | None = None
                    ) -> list[SweepPoint]:
    """Recall@k against exact search and queries per second at each ``ef_search``.

    Each value gets its own collection (``<prefix>-ef<value>``) with ``ef_search`` set at
    creation: ``collection.modify`` records a new ``ef_search`` but embedded Chroma keeps
    searching the already loaded index with the old one. ``hnsw`` sets the other index
    parameters (``max_neighbors``, ``ef_construction``) for every collection.
    """
    truth = [vdb.exact_top_k(vectors, q, k)[1] for q in queries]
    points = []
    for ef in ef_values:
        collection = fill_vector_collection(client, sweep_collection_name(prefix, ef), vectors,
                                            hnsw={**(hnsw or {}), "ef_search": int(ef)})
        points.append(measure_search(collection, queries, truth, k, ef_search=int(ef)))
    return points


def pareto_frontier(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats on both recall and QPS, by recall."""
    front = [p for p in points
             if not any(o.recall >= p.recall and o.qps >= p.qps and
                        (o.recall > p.recall or o.qps > p.qps) for o in points)]
    return sorted(front, key=lambda p: p.recall)


# --- pre-filtering versus post-filtering ----------------------------------------------


@dataclass(frozen=True)
class FilterOutcome:
    method: str
    returned: int  # results that came back (k asked)
    relevant: int  # of them: the asked tenant and the query's topic
    wrong_tenant: int
    latency_ms: float


def compare_filtering(collection: Any, docs: Sequence[vdb.Document], vectors: np.ndarray,
                      query_vector: np.ndarray, topic: str, where: dict[str, Any], k: int = 5,
                      repeats: int = 20) -> list[FilterOutcome]:
    """Pre-filter (``where`` inside the search) against post-filter (global top-k, then
    drop what ``where`` rejects), on a collection holding ``docs`` under their own ids."""
    by_id = {d.id: d for d in docs}
    tenant = next((c["tenant"]["$eq"] for c in where.get("$and", [where])
                   if isinstance(c.get("tenant"), dict)), None)

    def outcome(method: str, ids: list[str], seconds: float) -> FilterOutcome:
        found = [by_id[i] for i in ids]
        return FilterOutcome(method, len(found),
                             sum(d.topic == topic and d.tenant == tenant for d in found),
                             sum(d.tenant != tenant for d in found), seconds * 1000)

    q = [query_vector.tolist()]

    def pre() -> list[str]:
        return collection.query(query_embeddings=q, n_results=k, where=where,
                                include=[])["ids"][0]

    def post() -> list[str]:
        ids = collection.query(query_embeddings=q, n_results=k, include=[])["ids"][0]
        return [i for i in ids if vdb.matches(by_id[i].metadata(), where)]

    def none() -> list[str]:
        return collection.query(query_embeddings=q, n_results=k, include=[])["ids"][0]

    results = []
    for method, run in (("no filter", none), ("post-filter top-k", post),
                        ("pre-filter (where)", pre)):
        run()  # warm up
        started = time.perf_counter()
        for _ in range(repeats):
            ids = run()
        results.append(outcome(method, ids, (time.perf_counter() - started) / repeats))
    return results


def filtering_table(outcomes: Sequence[FilterOutcome]) -> Any:
    """:func:`compare_filtering`'s outcomes as a table."""
    from labsupport import plots

    return plots.Table([{"method": o.method, "returned": o.returned, "relevant": o.relevant,
                         "other tenant's": o.wrong_tenant, "latency (ms)": o.latency_ms}
                        for o in outcomes], formats={"latency (ms)": ".2f"})


# --- the explore panel (numpy only, so a slider move is fast) --------------------------


@dataclass
class FilterLab:
    """Precomputed vectors for the filter explorer."""

    docs: list[vdb.Document]
    vectors: np.ndarray  # document vectors, unit length
    questions: list[tuple[str, str]]  # (topic, question)
    question_vectors: np.ndarray


def make_filter_lab(docs: Sequence[vdb.Document], embedder: vdb.Embedder) -> FilterLab:
    questions = [(t, q) for t, qs in TOPIC_QUESTIONS.items() for q in qs]
    return FilterLab(list(docs), embedder([d.title + ". " + d.text for d in docs]),
                     questions, embedder([q for _, q in questions]))


def filter_explorer(lab: FilterLab, question: int, tenant: str, months: int, k: int,
                    fig: Any = None) -> str:
    """Pre- vs post-filter for one question, one tenant and the last ``months`` months.

    Updates ``fig`` (two bars per method: results returned, results relevant) when given,
    and returns the one-line summary.
    """
    topic, text = lab.questions[question]
    newest = max(d.timestamp for d in lab.docs)
    start = newest - months * 30 * 86400  # seconds
    where = {"$and": [{"tenant": tenant}, {"timestamp": {"$gte": start}}]}
    mask = vdb.filter_mask(lab.docs, where)
    q = lab.question_vectors[question]
    pre, _ = vdb.exact_top_k(lab.vectors, q, k, mask)
    glob, _ = vdb.exact_top_k(lab.vectors, q, k)
    post = [i for i in glob if mask[i]]
    rows = {"no filter": list(glob), "post-filter": post, "pre-filter": list(pre)}
    returned = [len(v) for v in rows.values()]
    relevant = [sum(lab.docs[i].topic == topic and mask[i] for i in v) for v in rows.values()]
    wrong = [sum(lab.docs[i].tenant != tenant for i in v) for v in rows.values()]
    if fig is not None:
        with fig.batch_update():
            fig.data[0].x, fig.data[0].y = list(rows), returned
            fig.data[1].x, fig.data[1].y = list(rows), relevant
            fig.data[2].x, fig.data[2].y = list(rows), wrong
            fig.layout.title = f"“{text}” for {tenant}, last {months} months, k={k}"
    return (f"{int(mask.sum())} documents pass the filter; pre-filter returns {returned[2]}/{k} "
            f"({relevant[2]} on topic), post-filter {returned[1]}/{k} ({relevant[1]} on topic), "
            f"no filter {wrong[0]} from the other tenant.")


def filter_explorer_figure() -> Any:
    from labsupport import plots

    fig = plots.figure("pre- vs post-filtering", ("method", None), ("results", None))
    for name in ("returned", "relevant (tenant, topic, date)", "other tenant's"):
        fig.add_bar(name=name, x=[], y=[])
    fig.update_layout(barmode="group")
    return plots.figure_widget(fig)



def load_tenant_stores(location: vdb.Location, design: str,
                       docs: Sequence[vdb.Document] | None = None,
                       embedder: vdb.Embedder | None = None) -> dict[str, vdb.TenantStore]:
    """One store per tenant, filled with its documents (upsert: safe to call again)."""
    docs = list(docs if docs is not None else vdb.load_documents())
    embedder = embedder or vdb.course_embedder()
    stores = {}
    for tenant in sorted({d.tenant for d in docs}):
        stores[tenant] = vdb.TenantStore(location, tenant, embedder, design=design)
        stores[tenant].add([d for d in docs if d.tenant == tenant])
    return stores
