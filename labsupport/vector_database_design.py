"""Backs ``07_vector_database_design.ipynb``: filtering, tenant isolation, embedding consistency.

Two client companies (``data/tenants/``) share one retrieval system. The four steps you
write in the notebook are, here: :func:`exact_top_k` (brute-force cosine search),
:func:`recall_at_k` (ANN-Benchmarks' recall against it), :func:`dates_and_departments`
(a ``where``; :func:`matches` is the brute-force evaluator Chroma is checked against), and
:class:`TenantStore`, bound to one tenant when it is made, with no method that reads or
writes outside it (a shared collection with a tenant filter, a collection per tenant, or
a Chroma tenant and database per client). Collections use the course's embedding function
(never Chroma's default, which downloads a model) and record what their embedder
computes; :func:`check_embedder` refuses another.

Where Chroma runs (embedded, or a server on loopback) is ``labsupport.services``; the
measurements and figures are in ``labsupport.explore``, the checker in ``labsupport.checks``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "tenants"
TENANTS: tuple[str, ...] = ("northwind", "bluefin")

# Chroma 1.5's HNSW defaults (populate_create_hnsw_defaults in
# chromadb/api/collection_configuration.py). The course's embedding function sets cosine.
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


# --- embedders ------------------------------------------------------------------------


PROBE_TEXT = "A fixed sentence, embedded to tell one embedding model from another."
PROBE_COMPONENTS = 16  # of the probe vector, kept in a collection's metadata
PROBE_TOLERANCE = 1e-3  # float noise between machines is ~1e-6; another model is ~0.1 off


@dataclass(frozen=True)
class Embedder:
    """An embedding space, known by what it computes: ``probe`` is its vector for
    :data:`PROBE_TEXT`. Two embedders with the same name but other vectors differ."""

    name: str
    dimension: int
    encode: Callable[[list[str]], np.ndarray] = field(repr=False, compare=False)

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _cached_encode(self, tuple(texts))

    @functools.cached_property
    def probe(self) -> tuple[float, ...]:
        """The first components of the vector for :data:`PROBE_TEXT`, rounded."""
        vector = np.asarray(self.encode([PROBE_TEXT]), dtype=np.float64)[0]
        return tuple(round(float(x), 6) for x in vector[:PROBE_COMPONENTS])

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short key for caches: the name and the probe (any difference: another key)."""
        rounded = ",".join(f"{x:.6f}" for x in self.probe)
        return f"{self.name}/{self.dimension}/{hashlib.sha256(rounded.encode()).hexdigest()[:12]}"

    def as_metadata(self) -> dict[str, Any]:
        """Collection metadata recording this embedder (the probe as text: not a list)."""
        return {"embedding_model": self.name, "embedding_dimension": self.dimension,
                "embedding_probe": ",".join(f"{x:.6f}" for x in self.probe)}


_ENCODE_CACHE: dict[tuple[str, str], np.ndarray] = {}  # (fingerprint, text) -> vector


def _cached_encode(embedder: Embedder, texts: tuple[str, ...]) -> np.ndarray:
    # Embedding 336 documents takes seconds on two cores: embed each text once per kernel,
    # keyed by what the embedder computes, never by its name alone.
    key = embedder.fingerprint
    todo = list(dict.fromkeys(t for t in texts if (key, t) not in _ENCODE_CACHE))
    if todo:
        vectors = np.asarray(embedder.encode(todo), dtype=np.float32)
        if len(_ENCODE_CACHE) > 20000:
            _ENCODE_CACHE.clear()
        _ENCODE_CACHE.update({(key, t): v for t, v in zip(todo, vectors, strict=True)})
    if not texts:
        return np.empty((0, embedder.dimension), dtype=np.float32)
    return np.stack([_ENCODE_CACHE[(key, t)] for t in texts])


@functools.cache
def course_embedder() -> Embedder:
    """all-MiniLM-L6-v2 with mean pooling: the course model, as trained."""
    from labsupport import embeddings

    identity = embeddings.identity()
    # Batches of 16, not 64: the same vectors, and a peak about 80 MB lower.
    encode = functools.partial(embeddings.embed, batch_size=16)
    return Embedder(identity.name, identity.dimension, encode)


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


def dates_and_departments(start: str, end: str,
                          departments: Sequence[str] | None = None) -> dict[str, Any]:
    """A ``where`` for ``start <= date < end`` (ISO dates, UTC, on the ``timestamp``
    seconds) and, if given, one of ``departments``: one top-level key, as Chroma needs."""

    def seconds(day: str) -> int:
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())

    clauses = [{"timestamp": {"$gte": seconds(start)}}, {"timestamp": {"$lt": seconds(end)}}]
    if departments:
        clauses.append({"department": {"$in": list(departments)}})
    return {"$and": clauses}


# --- Chroma: collections and the embedder guard --------------------------------------


class Location(Protocol):
    """Where Chroma runs (``services.ChromaLocation``); ``client`` creates its tenant."""

    def client(self, tenant: str | None = None, database: str | None = None) -> Any: ...


class EmbedderMismatchError(ValueError):
    """A collection was built with one embedder and is used with another."""


def open_collection(client: Any, name: str, embedder: Embedder, *, space: str = "cosine",
                    hnsw: dict[str, int] | None = None) -> Any:
    """Get or create collection ``name`` recording ``embedder``; refuse another embedder.
    ``space`` and ``hnsw`` apply only when it is created (an existing one is unchanged)."""
    from labsupport.embeddings import chroma_embedding_function

    collection = client.get_or_create_collection(
        name, embedding_function=chroma_embedding_function(),  # never Chroma's default
        metadata=embedder.as_metadata(),
        configuration={"hnsw": {"space": space, **(hnsw or {})}})
    check_embedder(collection, embedder)
    return collection


def check_embedder(collection: Any, embedder: Embedder) -> None:
    """Raise EmbedderMismatchError unless ``collection`` was built with an embedder that
    has ``embedder``'s name and dimension and computes the same probe vector."""
    meta = collection.metadata or {}
    recorded = (meta.get("embedding_model"), meta.get("embedding_dimension"))
    probe = [float(x) for x in str(meta.get("embedding_probe") or "").split(",") if x]
    if recorded != (embedder.name, embedder.dimension):
        problem = (f"holds vectors of {recorded[0]!r} ({recorded[1]} dimensions); this "
                   f"request uses {embedder.name!r} ({embedder.dimension} dimensions)")
    elif len(probe) != len(embedder.probe) or max(
            abs(a - b) for a, b in zip(probe, embedder.probe, strict=True)) > PROBE_TOLERANCE:
        problem = (f"was built by a {recorded[0]!r} whose vectors differ from this one's "
                   "(the probe sentence embeds differently): same name, another space")
    else:
        return
    raise EmbedderMismatchError(
        f"collection {collection.name!r} {problem}. Vectors of different models are not "
        "comparable: re-embed the collection, or use the embedder it was built with.")


# --- the tenant-scoped store ----------------------------------------------------------

DESIGNS = ("shared", "collection", "database")
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{1,40}[a-z0-9]")


class TenantScopeError(PermissionError):
    """A read or write tried to leave the store's tenant."""


class TenantNameError(ValueError):
    """A tenant id that is not 3-42 characters of [a-z0-9_-]; the message names it."""


def check_tenant(tenant: Any) -> str:
    """``tenant`` if it is a valid tenant id, else TenantNameError naming it. A full
    match: "northwind\\n" and "Northwind" are refused, not normalised."""
    if type(tenant) is not str or not _TENANT_NAME.fullmatch(tenant):
        raise TenantNameError(f"tenant {tenant!r:.60}: use 3-42 characters from [a-z0-9_-], "
                              "starting and ending with a letter or digit")
    return tenant


@dataclass(frozen=True)
class Hit:  # one search result
    id: str  # the document id, as the client knows it
    tenant: str
    distance: float
    title: str
    text: str
    metadata: dict[str, Any]


def _hit(key: str, meta: dict[str, Any], text: str, distance: float = 0.0) -> Hit:
    return Hit(key.split("/", 1)[1], meta["tenant"], float(distance), meta["title"], text, meta)


class TenantStore:
    """A document store bound to one tenant when it is made: every read and write is
    scoped to ``tenant``, and no method goes without the scope. ``design``: "shared" (one
    collection, a tenant filter and tenant-prefixed ids), "collection" (one per tenant; the
    filter stays, a second lock) or "database" (a Chroma tenant and database per client)."""

    def __init__(self, location: Location, tenant: str, embedder: Embedder, *,
                 design: str = "shared", name: str = "docs") -> None:
        check_tenant(tenant)
        if design not in DESIGNS:
            raise ValueError(f"design {design!r}: choose one of {DESIGNS}")
        self._tenant, self._embedder = tenant, embedder
        if design == "database":
            client = location.client(tenant=f"client-{tenant}", database=name)
            collection_name = name + "-all"
        else:
            client = location.client()
            collection_name = f"{name}-shared" if design == "shared" else f"{name}-{tenant}"
        self._collection = open_collection(client, collection_name, embedder)

    @property
    def tenant(self) -> str:
        return self._tenant

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
        if len(vector) != embedder.dimension:
            raise EmbedderMismatchError(f"vector has {len(vector)} components, "
                                        f"{embedder.name!r} makes {embedder.dimension}")
        result = self._collection.query(query_embeddings=[list(map(float, vector))],
                                        n_results=k, where=scope_where(self._tenant, where),
                                        include=["documents", "metadatas", "distances"])
        hits = [_hit(*row) for row in zip(result["ids"][0], result["metadatas"][0],
                                          result["documents"][0], result["distances"][0],
                                          strict=True)]
        leaked = [h.id for h in hits if h.tenant != self._tenant]
        if leaked:  # cannot happen with the filter above; a third lock costs nothing
            raise TenantScopeError(f"results of another tenant: {leaked}")
        return hits

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """This tenant's documents among ``ids`` (another tenant's ids find nothing)."""
        result = self._collection.get(ids=[self._key(i) for i in ids],
                                      where=scope_where(self._tenant),
                                      include=["documents", "metadatas"])
        return [_hit(*row) for row in zip(result["ids"], result["metadatas"],
                                          result["documents"], strict=True)]

    def delete(self, ids: Sequence[str]) -> None:
        """Delete this tenant's documents among ``ids``."""
        self._collection.delete(ids=[self._key(i) for i in ids],
                                where=scope_where(self._tenant))

    def count(self) -> int:
        """How many documents this tenant has."""
        return len(self._collection.get(where=scope_where(self._tenant), include=[])["ids"])
