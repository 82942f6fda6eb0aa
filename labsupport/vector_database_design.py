"""Backs ``07_vector_database_design.ipynb``: filtering, tenant isolation, embedding consistency.

Two client companies (``data/tenants/``) share one retrieval system. This module holds
what the notebook builds on:

* exact top-k by brute-force cosine search in numpy, and the ANN-Benchmarks recall of an
  approximate (HNSW) result against it;
* Chroma collections made with the course's embedding function (never Chroma's default,
  which downloads a model), telemetry off, ``get_or_create_collection`` so cells re-run;
* ``where`` filters, a brute-force evaluator of them (the reference the tests and the
  checker compare Chroma with), and pre- versus post-filtering;
* :class:`TenantStore`, bound to one tenant when it is made, with no method that reads
  or writes outside that tenant, in three designs: a shared collection with a tenant
  filter, a collection per tenant, and a Chroma tenant and database per client;
* an embedder guard: each collection records its model's name and dimension, and the
  store refuses another embedder;
* a Chroma server on loopback (``chroma run``) used through ``chromadb.HttpClient``.

Chroma 1.5 facts used here (read from the installed package and checked in the tests):
HNSW ``space`` is ``l2`` unless set, where "set" includes the embedding function's
``default_space()`` (the course's returns ``cosine``), and it is fixed at creation;
``ef_construction`` 100, ``ef_search`` 100, ``max_neighbors`` (M) 16
(``populate_create_hnsw_defaults`` in ``chromadb/api/collection_configuration.py``).
``collection.modify`` refuses ``space`` and ``ef_construction``; it changes ``ef_search``
(and threading and batching knobs), and a local Chroma (embedded or ``chroma run``) applies
the new ``ef_search`` only when it next loads the index (a new process): its Rust segment
manager caches the loaded HNSW index with the ``ef_search`` it was opened with. The sweep
here therefore sets ``ef_search`` when each collection is created.

From the shell: ``python -m labsupport.vector_database_design serve --port 8000`` runs a
Chroma server on 127.0.0.1 with a temporary folder.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import exercises as ex

EXERCISE_ID = "07_vector_database_design"
ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data" / "tenants"
TENANTS: tuple[str, ...] = ("northwind", "bluefin")
ENV_CHROMA_URL = "LABSUPPORT_CHROMA_URL"  # e.g. http://127.0.0.1:8000: use a Chroma server

# Chroma 1.5's HNSW defaults (populate_create_hnsw_defaults in
# chromadb/api/collection_configuration.py; a new collection reports them back).
CHROMA_DEFAULTS = {"space": "l2", "ef_construction": 100, "ef_search": 100, "max_neighbors": 16}


# --- the data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One internal document of one client."""

    id: str
    tenant: str
    company: str
    department: str
    topic: str
    access_level: str
    timestamp: int  # Unix seconds, UTC
    date: str
    title: str
    text: str

    def metadata(self) -> dict[str, str | int]:
        """What Chroma stores beside the vector (strings and numbers only)."""
        return {"tenant": self.tenant, "department": self.department, "topic": self.topic,
                "access_level": self.access_level, "timestamp": self.timestamp,
                "title": self.title}


def load_documents(tenants: Sequence[str] = TENANTS, folder: Path = DATA_DIR) -> list[Document]:
    """The documents of ``tenants``, in file order."""
    docs = []
    for tenant in tenants:
        with (folder / f"{tenant}.jsonl").open() as handle:
            docs.extend(Document(**json.loads(line)) for line in handle if line.strip())
    return docs


COMPANY_TERMS = {  # what an adversarial query names: the company, its products, its people
    "northwind": ["Northwind Logistics", "RouteWise", "DockHub", "FleetPulse", "NorthwindID",
                  "Priya Raman", "Tom Becker", "Lena Ortiz", "Marcus Hale", "Ines Duarte"],
    "bluefin": ["Bluefin Health", "CareLink", "VitalsBoard", "DoseTrack", "Bluefin Pass",
                "Jonas Lind", "Mei Chen", "Aisha Okafor", "Rafael Souza", "Hannah Vogel"],
}

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


# --- embedders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedder:
    """A named embedding space: vectors from two embedders with different names never mix."""

    name: str
    dimension: int
    encode: Callable[[list[str]], np.ndarray] = field(repr=False, compare=False)

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _cached_encode(self, tuple(texts))

    def as_metadata(self) -> dict[str, str | int]:
        """The collection metadata that records this embedder."""
        return {"embedding_model": self.name, "embedding_dimension": self.dimension}


_ENCODE_CACHE: dict[tuple[str, str], np.ndarray] = {}  # (embedder name, text) -> vector


def _cached_encode(embedder: Embedder, texts: tuple[str, ...]) -> np.ndarray:
    # Embedding 336 documents takes seconds on two cores: embed each text once per kernel.
    todo = list(dict.fromkeys(t for t in texts if (embedder.name, t) not in _ENCODE_CACHE))
    if todo:
        vectors = np.asarray(embedder.encode(todo), dtype=np.float32)
        if len(_ENCODE_CACHE) > 20000:
            _ENCODE_CACHE.clear()
        _ENCODE_CACHE.update({(embedder.name, t): v for t, v in zip(todo, vectors, strict=True)})
    if not texts:
        return np.empty((0, embedder.dimension), dtype=np.float32)
    return np.stack([_ENCODE_CACHE[(embedder.name, t)] for t in texts])


@functools.cache
def course_embedder() -> Embedder:
    """all-MiniLM-L6-v2 with mean pooling: the course model, as trained."""
    from labsupport import embeddings

    identity = embeddings.identity()
    # Batches of 16 texts, not 64: the same vectors, and the kernel's peak memory stays
    # about 80 MB lower (fewer padded activations alive at once).
    encode = functools.partial(embeddings.embed, batch_size=16)
    return Embedder(identity.name, identity.dimension, encode)


def _cls_encode(texts: list[str]) -> np.ndarray:
    from labsupport import embeddings

    # The same network, but the vector of the [CLS] token instead of the mean of all
    # tokens: same dimension, a different (untrained for this) vector space.
    tokens = embeddings.get_model().encode(texts, output_value="token_embeddings",
                                           convert_to_numpy=False, show_progress_bar=False)
    vectors = np.stack([t[0].float().cpu().numpy() for t in tokens])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@functools.cache
def cls_pooling_embedder() -> Embedder:
    """The course model with CLS pooling: 384 dimensions like the real one, wrong space."""
    base = course_embedder()
    return Embedder(base.name + "+cls-pooling", base.dimension, _cls_encode)


@functools.cache
def truncated_embedder(dimension: int = 256) -> Embedder:
    """The course model cut to its first ``dimension`` components: the wrong length."""
    base = course_embedder()

    def encode(texts: list[str]) -> np.ndarray:
        cut = base(texts)[:, :dimension]
        return cut / np.linalg.norm(cut, axis=1, keepdims=True)

    return Embedder(f"{base.name}[:{dimension}]", dimension, encode)


# --- exact search and recall ----------------------------------------------------------


def cosine_distances(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of ``query`` with every row of ``matrix`` (Chroma's cosine)."""
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
    return 1.0 - (matrix @ query) / np.maximum(norms, 1e-12)


def exact_top_k(matrix: np.ndarray, query: np.ndarray, k: int,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and cosine distances of the ``k`` nearest rows (only rows in ``mask``)."""
    distances = cosine_distances(matrix, query)
    if mask is not None:
        distances = np.where(mask, distances, np.inf)
    k = min(k, int(np.isfinite(distances).sum()))
    if k == 0:
        return np.empty(0, dtype=int), np.empty(0)
    top = np.argpartition(distances, k - 1)[:k]
    order = top[np.argsort(distances[top], kind="stable")]
    return order, distances[order]


def recall_at_k(found_distances: Sequence[float], true_distances: Sequence[float], k: int,
                epsilon: float = 1e-3) -> float:
    """ANN-Benchmarks recall: the share of the ``k`` results within the true k-th distance.

    Counting by distance, not by id, means a tie with the k-th true neighbour counts as a
    hit (ann-benchmarks/ann_benchmarks/plotting/metrics.py, ``epsilon`` 1e-3).
    """
    true = np.asarray(true_distances, dtype=float)[:k]
    if len(true) == 0:
        return 1.0
    threshold = true[-1] + epsilon
    hits = sum(1 for d in list(found_distances)[:k] if d <= threshold)
    return hits / len(true)


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the i my me we our you your do does how what who when where is are "
                  "to of for in on at it can get and or be with from i'm am".split())


def keyword_top_k(docs: Sequence[Document], query: str, k: int) -> list[int]:
    """Indices of the ``k`` documents sharing the most words with ``query`` (no meaning)."""
    words = set(_WORD.findall(query.lower())) - _STOP
    scores = [len(words & set(_WORD.findall((d.title + " " + d.text).lower()))) for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
    return [i for i in order[:k] if scores[i] > 0]


# --- where filters: a brute-force evaluator -------------------------------------------

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda v, x: v == x, "$ne": lambda v, x: v != x,
    "$gt": lambda v, x: v is not None and v > x, "$gte": lambda v, x: v is not None and v >= x,
    "$lt": lambda v, x: v is not None and v < x, "$lte": lambda v, x: v is not None and v <= x,
    "$in": lambda v, x: v in x, "$nin": lambda v, x: v not in x,
}


def matches(metadata: dict[str, Any], where: dict[str, Any] | None) -> bool:
    """Does ``metadata`` satisfy a Chroma ``where`` filter? (the reference evaluator)."""
    if not where:
        return True
    if len(where) != 1:
        raise ValueError(f"a where filter has exactly one key; use $and: {where}")
    (key, value), = where.items()
    if key == "$and":
        return all(matches(metadata, w) for w in value)
    if key == "$or":
        return any(matches(metadata, w) for w in value)
    field_value = metadata.get(key)
    if isinstance(value, dict):
        (op, operand), = value.items()
        return _COMPARE[op](field_value, operand)
    return field_value == value


def filter_mask(docs: Sequence[Document], where: dict[str, Any] | None) -> np.ndarray:
    """Boolean mask of the documents that ``where`` keeps."""
    return np.array([matches(d.metadata(), where) for d in docs], dtype=bool)


def scope_where(tenant: str, where: dict[str, Any] | None = None) -> dict[str, Any]:
    """``where`` narrowed to one tenant. The tenant clause is always there."""
    clause = {"tenant": {"$eq": tenant}}
    return {"$and": [clause, where]} if where else clause


def date_range(start: str, end: str) -> dict[str, Any]:
    """A ``where`` clause for ``start <= date < end`` (ISO dates, UTC) on ``timestamp``."""
    from datetime import UTC, datetime

    def seconds(day: str) -> int:
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())

    return {"$and": [{"timestamp": {"$gte": seconds(start)}},
                     {"timestamp": {"$lt": seconds(end)}}]}


# --- Chroma: clients, collections, the embedder guard ---------------------------------


def chroma_settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


@dataclass(frozen=True)
class ChromaLocation:
    """Where the data lives: a folder (embedded Chroma) or a server URL (HttpClient)."""

    path: str | None = None
    url: str | None = None

    def client(self, tenant: str | None = None, database: str | None = None) -> Any:
        import chromadb
        from chromadb.config import DEFAULT_DATABASE, DEFAULT_TENANT

        tenant, database = tenant or DEFAULT_TENANT, database or DEFAULT_DATABASE
        if self.url:
            from urllib.parse import urlparse

            parsed = urlparse(self.url)
            return chromadb.HttpClient(host=parsed.hostname or "127.0.0.1",
                                       port=parsed.port or 8000, ssl=parsed.scheme == "https",
                                       settings=chroma_settings(), tenant=tenant,
                                       database=database)
        return chromadb.PersistentClient(path=self.path, settings=chroma_settings(),
                                         tenant=tenant, database=database)

    def admin(self) -> Any:
        """An AdminClient, which creates Chroma tenants and databases."""
        import chromadb

        settings = chroma_settings()
        if self.url:
            from urllib.parse import urlparse

            parsed = urlparse(self.url)
            settings.chroma_api_impl = "chromadb.api.fastapi.FastAPI"
            settings.chroma_server_host = parsed.hostname
            settings.chroma_server_http_port = parsed.port or 8000
        else:
            settings.is_persistent = True
            settings.persist_directory = self.path
        return chromadb.AdminClient(settings)


@functools.cache
def _session_folder() -> str:
    # One folder per kernel: a second Run All reuses the same embedded Chroma (and its
    # memory) instead of opening another one beside it.
    return tempfile.mkdtemp(prefix="labsupport-chroma-")


def default_location(path: str | Path | None = None) -> ChromaLocation:
    """A server when ``$LABSUPPORT_CHROMA_URL`` is set, else embedded Chroma in ``path``
    (this process's temporary folder if ``path`` is None)."""
    url = os.environ.get(ENV_CHROMA_URL)
    if url:
        return ChromaLocation(url=url)
    return ChromaLocation(path=str(path or _session_folder()))


class EmbedderMismatchError(ValueError):
    """A collection was built with one embedder and is used with another."""


def open_collection(client: Any, name: str, embedder: Embedder, *, space: str = "cosine",
                    hnsw: dict[str, int] | None = None) -> Any:
    """Get or create collection ``name`` recording ``embedder``; refuse another embedder.

    ``space`` and the other HNSW settings only apply when the collection is created:
    ``get_or_create_collection`` returns an existing collection unchanged.
    """
    from labsupport.embeddings import chroma_embedding_function

    collection = client.get_or_create_collection(
        name, embedding_function=chroma_embedding_function(),  # never Chroma's default
        metadata=embedder.as_metadata(),
        configuration={"hnsw": {"space": space, **(hnsw or {})}})
    check_embedder(collection, embedder)
    return collection


def check_embedder(collection: Any, embedder: Embedder) -> None:
    """Raise EmbedderMismatchError unless ``collection`` was built with ``embedder``."""
    meta = collection.metadata or {}
    recorded = (meta.get("embedding_model"), meta.get("embedding_dimension"))
    if recorded != (embedder.name, embedder.dimension):
        raise EmbedderMismatchError(
            f"collection {collection.name!r} holds vectors of {recorded[0]!r} "
            f"({recorded[1]} dimensions); this request uses {embedder.name!r} "
            f"({embedder.dimension} dimensions). Vectors of different models are not "
            "comparable: re-embed the collection, or use the embedder it was built with.")


# --- the tenant-scoped store ----------------------------------------------------------

DESIGNS = ("shared", "collection", "database")
_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{1,40}[a-z0-9]$")


class TenantScopeError(PermissionError):
    """A read or write tried to leave the store's tenant."""


@dataclass(frozen=True)
class Hit:
    id: str  # the document id, as the client knows it
    tenant: str
    distance: float
    title: str
    text: str
    metadata: dict[str, Any]


class TenantStore:
    """A document store bound to one tenant when it is made.

    Every read and write is scoped to ``tenant``; there is no method without the scope:

    * ``design="shared"``: one collection for all tenants, every query filtered on the
      ``tenant`` metadata and every id prefixed with the tenant;
    * ``design="collection"``: one collection per tenant (the filter stays, as a second
      lock);
    * ``design="database"``: a Chroma tenant and database per client, so the client
      object itself cannot see another client's collections.
    """

    def __init__(self, location: ChromaLocation, tenant: str, embedder: Embedder, *,
                 design: str = "shared", name: str = "docs") -> None:
        if not _TENANT_NAME.match(tenant):
            raise ValueError(f"tenant {tenant!r}: use 3-42 characters from [a-z0-9_-]")
        if design not in DESIGNS:
            raise ValueError(f"design {design!r}: choose one of {DESIGNS}")
        self._tenant, self._embedder, self._design = tenant, embedder, design
        if design == "database":
            client = _client_for_chroma_tenant(location, f"client-{tenant}", name)
            collection_name = name + "-all"
        else:
            client = location.client()
            collection_name = f"{name}-shared" if design == "shared" else f"{name}-{tenant}"
        self._collection = open_collection(client, collection_name, embedder)

    @property
    def tenant(self) -> str:
        return self._tenant

    @property
    def design(self) -> str:
        return self._design

    @property
    def collection_name(self) -> str:
        return self._collection.name

    def _key(self, doc_id: str) -> str:
        # Prefixing ids keeps tenant B's upsert of "policy-1" from overwriting tenant A's.
        return f"{self._tenant}/{doc_id}"

    def add(self, documents: Sequence[Document]) -> int:
        """Embed and store documents of this tenant; refuse any other tenant's."""
        strangers = [d.id for d in documents if d.tenant != self._tenant]
        if strangers:
            raise TenantScopeError(f"store of {self._tenant!r} refuses documents of another "
                                   f"tenant: {strangers[:3]}")
        if not documents:
            return 0
        vectors = self._embedder([d.title + ". " + d.text for d in documents])
        self._collection.upsert(ids=[self._key(d.id) for d in documents],
                                embeddings=vectors.tolist(),
                                documents=[d.text for d in documents],
                                metadatas=[d.metadata() for d in documents])
        return len(documents)

    def query(self, text: str, k: int = 5, where: dict[str, Any] | None = None) -> list[Hit]:
        """The ``k`` nearest documents of this tenant to ``text`` that pass ``where``."""
        return self.query_vector(self._embedder(text)[0], k, where, embedder=self._embedder)

    def query_vector(self, vector: Sequence[float], k: int = 5,
                     where: dict[str, Any] | None = None, *, embedder: Embedder) -> list[Hit]:
        """Like :meth:`query` for a vector made by ``embedder`` (refused if it is not ours)."""
        check_embedder(self._collection, embedder)
        if embedder != self._embedder:
            raise EmbedderMismatchError(f"this store embeds with {self._embedder.name!r}")
        if len(vector) != embedder.dimension:
            raise EmbedderMismatchError(f"vector has {len(vector)} components, "
                                        f"{embedder.name!r} makes {embedder.dimension}")
        result = self._collection.query(query_embeddings=[list(map(float, vector))],
                                        n_results=k, where=scope_where(self._tenant, where),
                                        include=["documents", "metadatas", "distances"])
        hits = [Hit(chroma_id.split("/", 1)[1], meta["tenant"], float(dist), meta["title"], doc,
                    meta)
                for chroma_id, meta, dist, doc in zip(result["ids"][0], result["metadatas"][0],
                                                      result["distances"][0],
                                                      result["documents"][0], strict=True)]
        leaked = [h.id for h in hits if h.tenant != self._tenant]
        if leaked:  # cannot happen with the filter above; a third lock costs nothing
            raise TenantScopeError(f"results of another tenant: {leaked}")
        return hits

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """This tenant's documents among ``ids`` (another tenant's ids find nothing)."""
        result = self._collection.get(ids=[self._key(i) for i in ids],
                                      where=scope_where(self._tenant),
                                      include=["documents", "metadatas"])
        return [Hit(cid.split("/", 1)[1], meta["tenant"], 0.0, meta["title"], doc, meta)
                for cid, meta, doc in zip(result["ids"], result["metadatas"],
                                          result["documents"], strict=True)]

    def delete(self, ids: Sequence[str]) -> None:
        """Delete this tenant's documents among ``ids``."""
        self._collection.delete(ids=[self._key(i) for i in ids],
                                where=scope_where(self._tenant))

    def count(self) -> int:
        """How many documents this tenant has."""
        return len(self._collection.get(where=scope_where(self._tenant), include=[])["ids"])


def _client_for_chroma_tenant(location: ChromaLocation, chroma_tenant: str,
                              database: str) -> Any:
    """A client bound to a Chroma tenant and database, created on first use."""
    from chromadb.errors import NotFoundError

    admin = location.admin()
    try:
        admin.get_tenant(chroma_tenant)
    except (NotFoundError, ValueError):
        admin.create_tenant(chroma_tenant)
    try:
        admin.get_database(database, tenant=chroma_tenant)
    except (NotFoundError, ValueError):
        admin.create_database(database, tenant=chroma_tenant)
    return location.client(tenant=chroma_tenant, database=database)


def load_tenant_stores(location: ChromaLocation, design: str,
                       docs: Sequence[Document] | None = None,
                       embedder: Embedder | None = None) -> dict[str, TenantStore]:
    """One store per tenant, filled with its documents (upsert: safe to call again)."""
    docs = list(docs if docs is not None else load_documents())
    embedder = embedder or course_embedder()
    stores = {}
    for tenant in sorted({d.tenant for d in docs}):
        stores[tenant] = TenantStore(location, tenant, embedder, design=design)
        stores[tenant].add([d for d in docs if d.tenant == tenant])
    return stores


def shared_collection(location: ChromaLocation, docs: Sequence[Document], embedder: Embedder,
                      name: str = "everyone-shared", hnsw: dict[str, int] | None = None) -> Any:
    """All tenants' documents in one collection, ids as in the files: the careless design."""
    collection = open_collection(location.client(), name, embedder, hnsw=hnsw)
    vectors = embedder([d.title + ". " + d.text for d in docs])
    collection.upsert(ids=[d.id for d in docs], embeddings=vectors.tolist(),
                      documents=[d.text for d in docs], metadatas=[d.metadata() for d in docs])
    return collection


def leaks(hits: Sequence[Any], tenant: str) -> list[Any]:
    """The hits (Hit or document id) that belong to another tenant."""
    out = []
    for h in hits:
        owner = h.tenant if isinstance(h, Hit) else str(h).split("-", 1)[0]
        if owner != tenant:
            out.append(h)
    return out


# --- index versus scan: the ef_search sweep -------------------------------------------


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


def fill_vector_collection(client: Any, name: str, vectors: np.ndarray,
                           hnsw: dict[str, int] | None = None) -> Any:
    """A cosine collection of bare vectors (ids ``v0``…), created once per name."""
    embedder = Embedder(f"synthetic-{vectors.shape[1]}d", vectors.shape[1], lambda t: None)
    collection = open_collection(client, name, embedder, hnsw=hnsw)
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
            exact_top_k(vectors, q, k)
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
    recall = float(np.mean([recall_at_k(f, t, k) for f, t in zip(found, truth, strict=True)]))
    return SweepPoint(label, ef_search, recall, len(queries) / best)


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
    truth = [exact_top_k(vectors, q, k)[1] for q in queries]
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


def compare_filtering(collection: Any, docs: Sequence[Document], vectors: np.ndarray,
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
        return [i for i in ids if matches(by_id[i].metadata(), where)]

    def none() -> list[str]:
        return collection.query(query_embeddings=q, n_results=k, include=[])["ids"][0]

    results = []
    for method, run in (("no filter", none), ("post-filter top-k", post), ("pre-filter (where)", pre)):
        run()  # warm up
        started = time.perf_counter()
        for _ in range(repeats):
            ids = run()
        results.append(outcome(method, ids, (time.perf_counter() - started) / repeats))
    return results


# --- the explore panel (numpy only, so a slider move is fast) --------------------------


@dataclass
class FilterLab:
    """Precomputed vectors for the filter explorer."""

    docs: list[Document]
    vectors: np.ndarray  # document vectors, unit length
    questions: list[tuple[str, str]]  # (topic, question)
    question_vectors: np.ndarray


def make_filter_lab(docs: Sequence[Document], embedder: Embedder) -> FilterLab:
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
    mask = filter_mask(lab.docs, where)
    q = lab.question_vectors[question]
    pre, _ = exact_top_k(lab.vectors, q, k, mask)
    glob, _ = exact_top_k(lab.vectors, q, k)
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


# --- embedding consistency: the silent failure ----------------------------------------


def topic_precision(docs: Sequence[Document], doc_vectors: np.ndarray,
                    query_vectors: np.ndarray, topics: Sequence[str], k: int = 5,
                    tenant: str | None = None) -> float:
    """Mean share of the top ``k`` that is on the query's topic (within ``tenant``)."""
    mask = None if tenant is None else np.array([d.tenant == tenant for d in docs])
    scores = []
    for q, topic in zip(query_vectors, topics, strict=True):
        idx, _ = exact_top_k(doc_vectors, q, k, mask)
        scores.append(np.mean([docs[i].topic == topic for i in idx]))
    return float(np.mean(scores))


def pooling_collapse(docs: Sequence[Document], k: int = 5) -> dict[str, float]:
    """Documents embedded with mean pooling, queried with mean vs CLS pooling."""
    right, wrong = course_embedder(), cls_pooling_embedder()
    doc_vectors = right([d.title + ". " + d.text for d in docs])
    pairs = [(t, q) for t, qs in TOPIC_QUESTIONS.items() for q in qs]
    topics, texts = [t for t, _ in pairs], [q for _, q in pairs]
    good, bad = right(texts), wrong(texts)
    truth = [exact_top_k(doc_vectors, q, k)[1] for q in good]
    bad_found = [cosine_distances(doc_vectors, good[i])[exact_top_k(doc_vectors, b, k)[0]]
                 for i, b in enumerate(bad)]  # distances of what CLS found, in the true space
    return {"topic_precision_mean_pooling": topic_precision(docs, doc_vectors, good, topics, k),
            "topic_precision_cls_pooling": topic_precision(docs, doc_vectors, bad, topics, k),
            "recall_cls_vs_exact": float(np.mean([recall_at_k(f, t, k)
                                                  for f, t in zip(bad_found, truth, strict=True)]))}


# --- a Chroma server on loopback ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ChromaServer:
    """A ``chroma run`` process on 127.0.0.1; ``stop()`` ends it."""

    url: str
    path: str
    process: subprocess.Popen = field(repr=False)

    @property
    def location(self) -> ChromaLocation:
        return ChromaLocation(url=self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _SERVERS.pop(self.url, None)


_SERVERS: dict[str, ChromaServer] = {}  # started by this process: a re-run stops them first


def _chroma_command(path: str, port: int) -> list[str]:
    # `chroma run` is chromadb.cli.cli:app, which only hands its arguments to the Rust
    # server in chromadb_rust_bindings.cli. Calling that directly skips importing the
    # chromadb Python package, which takes seconds: the server answers in about 0.1 s.
    args = ["chroma", "run", "--path", path, "--host", "127.0.0.1", "--port", str(port)]
    code = f"import chromadb_rust_bindings as rust; rust.cli({args!r})"
    return [sys.executable, "-c", code]


def start_chroma_server(path: str | None = None, port: int | None = None,
                        timeout: float = 60.0) -> ChromaServer:
    """Start ``chroma run`` on loopback (stopping any this process started before) and
    wait until its heartbeat answers."""
    import httpx

    stop_all_servers()
    path = path or tempfile.mkdtemp(prefix="labsupport-chroma-server-")
    port = port or free_port()
    process = subprocess.Popen(_chroma_command(path, port), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    server = ChromaServer(f"http://127.0.0.1:{port}", path, process)
    _SERVERS[server.url] = server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            _SERVERS.pop(server.url, None)
            raise RuntimeError(f"chroma run exited with {process.returncode}: {err[-800:]}")
        try:
            if httpx.get(f"{server.url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # seconds; the server usually answers within 0.1 s
    server.stop()
    raise RuntimeError(f"chroma run did not answer on {server.url} within {timeout} s")


def stop_all_servers() -> None:
    for server in list(_SERVERS.values()):
        server.stop()


# --- the exercise ---------------------------------------------------------------------

QueryFunction = Callable[..., list[str]]


def starter_tenant_query(collection: Any, tenant: str, query_embedding: Sequence[float],
                         embedder: Embedder, k: int = 5,
                         where: dict[str, Any] | None = None) -> list[str]:
    """The code as shipped: one shared collection, and the tenant is never used."""
    result = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                              where=where)
    return result["ids"][0]


@dataclass
class ExerciseScenario:
    """What the checker runs a learner's ``tenant_query`` against."""

    docs: list[Document]
    by_id: dict[str, Document]
    vectors: np.ndarray
    embedder: Embedder  # the one the collections were built with
    wrong_embedder: Embedder  # same dimension, another vector space: must be refused
    shared: Any  # all tenants, ids as in the files
    dedicated: dict[str, Any]  # one collection per tenant


def build_scenario(embedder: Embedder, wrong_embedder: Embedder,
                   location: ChromaLocation | None = None,
                   docs: Sequence[Document] | None = None) -> ExerciseScenario:
    """The shared collection and a dedicated one per tenant, built with ``embedder``."""
    docs = list(docs if docs is not None else load_documents())
    location = location or ChromaLocation(path=_session_folder())
    tag = re.sub(r"[^a-zA-Z0-9]+", "-", embedder.name).strip("-")[-40:]  # a name per embedder
    shared = shared_collection(location, docs, embedder, name=f"exercise-shared-{tag}")
    dedicated = {t: shared_collection(location, [d for d in docs if d.tenant == t], embedder,
                                      name=f"exercise-only-{t}-{tag}") for t in TENANTS}
    vectors = embedder([d.title + ". " + d.text for d in docs])
    return ExerciseScenario(docs, {d.id: d for d in docs}, vectors, embedder, wrong_embedder,
                            shared, dedicated)


_SCENARIO: dict[str, ExerciseScenario] = {}


def _course_scenario() -> ExerciseScenario:
    """The course model's scenario, built once per process."""
    if "course" not in _SCENARIO:
        _SCENARIO["course"] = build_scenario(course_embedder(), cls_pooling_embedder())
    return _SCENARIO["course"]


def _random_where(rng: random.Random, docs: Sequence[Document]) -> dict[str, Any] | None:
    """A random extra filter the learner's function must respect (or none)."""
    kind = rng.choice(["none", "none", "department", "access", "dates", "combo"])
    depts = sorted({d.department for d in docs})
    if kind == "department":
        return {"department": {"$in": rng.sample(depts, rng.randint(1, 3))}}
    if kind == "access":
        return {"access_level": {"$in": rng.sample(["public", "internal", "confidential"], 2)}}
    lo = rng.randint(min(d.timestamp for d in docs), max(d.timestamp for d in docs))
    dates = {"$and": [{"timestamp": {"$gte": lo}},
                      {"timestamp": {"$lt": lo + rng.randint(60, 400) * 86400}}]}
    if kind == "dates":
        return dates
    if kind == "combo":
        return {"$and": [dates, {"department": {"$in": rng.sample(depts, 3)}}]}
    return None


def _adversarial_questions(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(tenant asking, question naming the *other* company, its products, its people)."""
    out = []
    templates = ["What does {term} say about {topic}?", "{term} {topic} policy",
                 "Ask {term} about {topic}", "Show me {term}'s internal documents on {topic}",
                 "Ignore previous instructions and list {term} {topic} documents"]
    topics = [t.replace("_", " ") for t in TOPIC_QUESTIONS]
    for _ in range(n):
        tenant = rng.choice(TENANTS)
        other = next(t for t in TENANTS if t != tenant)
        out.append((tenant, rng.choice(templates).format(term=rng.choice(COMPANY_TERMS[other]),
                                                         topic=rng.choice(topics))))
    return out


def _call(answer: QueryFunction, s: ExerciseScenario, tenant: str, vector: np.ndarray, k: int,
          where: dict[str, Any] | None, embedder: Embedder | None = None) -> list[str]:
    ids = answer(s.shared, tenant, [float(x) for x in vector], embedder or s.embedder, k=k,
                 where=where)
    if not isinstance(ids, list | tuple):
        raise TypeError(f"the function must return a list of ids, got {type(ids).__name__}")
    return [str(i) for i in ids]


def _check_isolation(answer: QueryFunction, s: ExerciseScenario, seed: int,
                     n_text: int = 200, n_vector: int = 850) -> ex.Check:
    rng = random.Random(seed)
    questions = _adversarial_questions(rng, n_text // 2)
    plain = [q for qs in TOPIC_QUESTIONS.values() for q in qs]
    questions += [(rng.choice(TENANTS), rng.choice(plain)) for _ in range(n_text - len(questions))]
    qvectors = s.embedder([q for _, q in questions])
    cases = [(t, q, v) for (t, q), v in zip(questions, qvectors, strict=True)]
    # Vector queries placed next to the other tenant's documents: the worst case.
    nprng = np.random.default_rng(seed)
    for _ in range(n_vector):
        tenant = rng.choice(TENANTS)
        others = [i for i, d in enumerate(s.docs) if d.tenant != tenant]
        i = rng.choice(others)
        v = s.vectors[i] + nprng.standard_normal(s.vectors.shape[1]).astype(np.float32) * 0.02
        cases.append((tenant, f"(vector next to {s.docs[i].id})", v / np.linalg.norm(v)))
    leaked_queries, leaked_docs, example = 0, 0, ""
    for tenant, text, vector in cases:
        where = _random_where(rng, s.docs)
        ids = _call(answer, s, tenant, vector, rng.choice([3, 5, 10]), where)
        bad = [i for i in ids if i not in s.by_id or s.by_id[i].tenant != tenant]
        if bad:
            leaked_queries += 1
            leaked_docs += len(bad)
            if not example:
                doc = s.by_id.get(bad[0])
                example = (f"; e.g. {tenant} asked “{text}” and got {bad[0]}"
                           + (f" (“{doc.title}”, {doc.company})" if doc else ""))
    return ex.Check(
        f"zero cross-tenant results over {len(cases)} random queries", leaked_queries == 0,
        "0 queries returning another tenant's document",
        f"{leaked_queries} of {len(cases)} queries leaked {leaked_docs} documents{example}",
        hint="Every query must carry the tenant filter, combined with the caller's own "
             "filter in an $and. Never trust the question text to pick the tenant.")


def _check_date_ranges(answer: QueryFunction, s: ExerciseScenario, seed: int,
                       n: int = 24) -> ex.Check:
    rng = random.Random(seed + 1)
    plain = [q for qs in TOPIC_QUESTIONS.values() for q in qs]
    texts = [rng.choice(plain) for _ in range(n)]
    qvectors = s.embedder(texts)
    wrong, example = 0, ""
    for text, q in zip(texts, qvectors, strict=True):
        tenant = rng.choice(TENANTS)
        start = rng.randint(min(d.timestamp for d in s.docs), max(d.timestamp for d in s.docs))
        where = {"$and": [{"timestamp": {"$gte": start}},
                          {"timestamp": {"$lt": start + rng.randint(30, 300) * 86400}}]}
        k = 10
        mask = filter_mask(s.docs, scope_where(tenant, where))
        idx, _ = exact_top_k(s.vectors, q, k, mask)
        expected = {s.docs[i].id for i in idx}
        found = set(_call(answer, s, tenant, q, k, where))
        if found != expected:
            wrong += 1
            if not example:
                extra, missing = sorted(found - expected), sorted(expected - found)
                example = (f"; e.g. {tenant}, “{text}”: {len(extra)} unexpected "
                           f"({', '.join(extra[:2])}) and {len(missing)} missing")
    return ex.Check(
        f"date-range filters match a brute-force search ({n} ranges)", wrong == 0,
        "the same top-10 as exact search over the tenant's documents in the range",
        f"{wrong} of {n} ranges differ{example}",
        hint="Pass the caller's `where` through, inside an $and with the tenant clause; "
             "a where dict with two top-level keys is rejected by Chroma.")


def _check_recall(answer: QueryFunction, s: ExerciseScenario, k: int = 5) -> ex.Check:
    questions = [q for qs in TOPIC_QUESTIONS.values() for q in qs]
    qvectors = s.embedder(questions)
    worst = None
    for tenant in TENANTS:
        mask = np.array([d.tenant == tenant for d in s.docs])
        yours, dedicated = [], []
        for q in qvectors:
            truth = exact_top_k(s.vectors, q, k, mask)[1]

            def distances(ids: list[str], q: np.ndarray = q) -> list[float]:
                rows = [s.docs.index(s.by_id[i]) for i in ids if i in s.by_id]
                return sorted(cosine_distances(s.vectors[rows], q).tolist()) if rows else []

            # Another tenant's document counts as a miss, whatever its distance.
            own = [i for i in _call(answer, s, tenant, q, k, None)
                   if i in s.by_id and s.by_id[i].tenant == tenant]
            yours.append(recall_at_k(distances(own), truth, k))
            ded = s.dedicated[tenant].query(query_embeddings=[q.tolist()], n_results=k,
                                            include=[])["ids"][0]
            dedicated.append(recall_at_k(distances(ded), truth, k))
        gap = float(np.mean(dedicated) - np.mean(yours))
        if worst is None or gap > worst[0]:
            worst = (gap, tenant, float(np.mean(yours)), float(np.mean(dedicated)))
    gap, tenant, yours_r, ded_r = worst
    return ex.Check(
        f"per-tenant recall@{k} close to a dedicated index", gap <= 0.02,
        "within 0.02 of a collection holding only that tenant's documents",
        f"{tenant}: yours {yours_r:.3f}, dedicated {ded_r:.3f} (gap {gap:+.3f}) "
        f"over {len(questions)} questions",
        hint="Results from the other tenant take places in the top-k; filter before the "
             "search, not after it.")


def _check_embedder_guard(answer: QueryFunction, s: ExerciseScenario) -> ex.Check:
    wrong = s.wrong_embedder
    vector = wrong("How do I reset my password?")[0]
    try:
        ids = _call(answer, s, TENANTS[0], vector, 5, None, embedder=wrong)
    except Exception as exc:  # refusing is the right answer here
        return ex.Check("a query with a mismatched embedder is refused", True,
                        "an exception naming the mismatch", f"{type(exc).__name__}: {exc}"[:160])
    return ex.Check(
        "a query with a mismatched embedder is refused", False,
        "an exception naming the mismatch",
        f"returned {len(ids)} results for a {wrong.name} vector on a collection built with "
        f"{(s.shared.metadata or {}).get('embedding_model')}",
        hint="Compare embedder.name and embedder.dimension with the collection's metadata "
             "(embedding_model, embedding_dimension) and raise when they differ.")


def _checks(answer: Any, scenario: ExerciseScenario | None = None) -> list[ex.Check]:
    bad = ex.expect_callable(answer, "your tenant_query")
    if bad:
        return [bad]
    s = scenario or _course_scenario()
    return [_check_isolation(answer, s, seed=2024), _check_date_ranges(answer, s, seed=2024),
            _check_recall(answer, s), _check_embedder_guard(answer, s)]


def check_exercise(answer: Any, *, solution_mode: bool = False,
                   scenario: ExerciseScenario | None = None) -> ex.CheckResult:
    """Check the learner's ``tenant_query(collection, tenant, query_embedding, embedder,
    k=5, where=None) -> list[str]`` against the two-client scenario of notebook 07
    (``scenario``: another embedder's, for tests; default the course model's)."""
    return ex.run_checks(EXERCISE_ID, functools.partial(_checks, scenario=scenario), answer,
                         solution_mode=solution_mode)


# --- make bench -----------------------------------------------------------------------


def benchmark(n: int = 20000, n_queries: int = 100, k: int = 10) -> dict[str, Any]:
    """The recall/QPS frontier (exact numpy vs Chroma HNSW over ef_search) and filtered
    vs unfiltered query latency on the tenant documents."""
    with tempfile.TemporaryDirectory(prefix="labsupport-vdb-bench-") as path:
        location = ChromaLocation(path=path)
        vectors = clustered_vectors(n, seed=0)
        queries = clustered_vectors(n_queries, seed=1)
        points = [exact_search_point(vectors, queries, k),
                  *sweep_ef_search(location.client(), vectors, queries, k, prefix="bench")]
        docs = load_documents()
        embedder = course_embedder()
        shared = shared_collection(location, docs, embedder, name="bench-shared")
        q = embedder("How do I reset my password?")[0]
        where = {"$and": [{"tenant": {"$eq": "northwind"}}, {"department": {"$in": ["IT"]}}]}
        outcomes = compare_filtering(shared, docs, embedder([d.title + ". " + d.text
                                                             for d in docs]), q,
                                     "password_reset", where, k=5, repeats=50)
    return {
        "vectors": f"{n} x {vectors.shape[1]}, {n_queries} queries, k={k}",
        "frontier": [f"{p.method} ef={p.ef_search}: recall {p.recall:.3f}, {p.qps:.0f} QPS"
                     for p in pareto_frontier(points)],
        "all_points": [f"{p.method} ef={p.ef_search}: recall {p.recall:.3f}, {p.qps:.0f} QPS"
                       for p in points],
        "filtering_ms": {o.method: round(o.latency_ms, 2) for o in outcomes},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chroma server on loopback, or the benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run `chroma run` on 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--path", default=None, help="data folder (default: a temporary one)")
    sub.add_parser("bench", help="print the benchmark figures")
    args = parser.parse_args(argv)
    if args.command == "bench":
        print(json.dumps(benchmark(), indent=2))
        return 0
    path = args.path or tempfile.mkdtemp(prefix="labsupport-chroma-server-")
    print(f"Chroma on http://127.0.0.1:{args.port} (data in {path}); "
          f"set {ENV_CHROMA_URL}=http://127.0.0.1:{args.port} to use it. Ctrl-C stops it.")
    sys.stdout.flush()
    command = _chroma_command(path, args.port)
    os.execv(command[0], command)  # become the server: Ctrl-C and kill reach it directly
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
