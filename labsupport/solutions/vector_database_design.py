"""Answer key of ``07_vector_database_design.ipynb``: the four steps, the scenario's
tenant-scoped query function and the quiz."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from labsupport import vector_database_design as vdb

# --- Step 1: exact top-k -------------------------------------------------------------------

def exact_top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine distances of the k nearest rows, nearest first."""
    matrix, query = np.asarray(matrix, dtype=float), np.asarray(query, dtype=float)
    similarity = (matrix @ query) / np.maximum(
        np.linalg.norm(matrix, axis=1) * np.linalg.norm(query), 1e-12)
    distances = 1.0 - similarity
    order = np.argsort(distances, kind="stable")[:max(0, k)]
    return order, distances[order]


# --- Step 2: recall@k ----------------------------------------------------------------------

def recall_at_k(found_distances: Sequence[float], true_distances: Sequence[float],
                k: int) -> float:
    """ANN-Benchmarks: the share of the first k results within the true k-th distance."""
    true = list(true_distances)[:k]
    if not true:
        return 1.0
    threshold = true[-1] + 1e-3
    return sum(1 for d in list(found_distances)[:k] if d <= threshold) / len(true)


# --- Step 3: a where for dates and departments -------------------------------------------

def dates_and_departments(start: str, end: str, departments: list[str]) -> dict[str, Any]:
    """start <= date < end, in UTC seconds, and one of the departments."""
    def seconds(day: str) -> int:
        return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())

    return {"$and": [{"timestamp": {"$gte": seconds(start)}},
                     {"timestamp": {"$lt": seconds(end)}},
                     {"department": {"$in": list(departments)}}]}


# --- Step 4: a store bound to one tenant --------------------------------------------------

class TenantStore:
    """Every read and write scoped to the tenant fixed at construction."""

    def __init__(self, collection: Any, tenant: str) -> None:
        self._collection = collection
        self._tenant = vdb.check_tenant(tenant)

    def _scope(self, where: dict[str, Any] | None = None) -> dict[str, Any]:
        clause = {"tenant": self._tenant}
        return {"$and": [clause, where]} if where else clause

    def add(self, ids: list[str], vectors: list[list[float]], metadatas: list[dict]) -> None:
        strangers = [m for m in metadatas if m.get("tenant", self._tenant) != self._tenant]
        if strangers:
            raise vdb.TenantScopeError(f"{self._tenant!r} refuses another tenant's documents")
        self._collection.upsert(ids=[f"{self._tenant}/{i}" for i in ids], embeddings=vectors,
                                metadatas=[{**m, "tenant": self._tenant} for m in metadatas])

    def query(self, vector: list[float], k: int = 5,
              where: dict[str, Any] | None = None) -> list[str]:
        found = self._collection.query(query_embeddings=[list(vector)], n_results=k,
                                       where=self._scope(where), include=[])["ids"][0]
        return [i.split("/", 1)[1] for i in found]

    def count(self) -> int:
        return len(self._collection.get(where=self._scope(), include=[])["ids"])


# --- The scenario: client A sees client B's documents ---------------------------------------

def tenant_query(collection: Any, tenant: str, query_embedding: Sequence[float],
                 embedder: vdb.Embedder, k: int = 5,
                 where: dict[str, Any] | None = None) -> list[str]:
    """The ``k`` nearest documents of ``tenant`` that also pass ``where``.

    The tenant clause is added here, in the layer that builds the query, so no caller
    can forget it or widen it; the embedder must compute what the collection's did.
    """
    vdb.check_embedder(collection, embedder)  # name, dimension and the probe vector
    scope = {"tenant": {"$eq": vdb.check_tenant(tenant)}}
    full_where = {"$and": [scope, where]} if where else scope
    result = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                              where=full_where, include=[])
    return result["ids"][0]


# --- The review quiz -------------------------------------------------------------------------

QUIZ_ANSWERS = {"post-filter": 1, "caller-where": 2, "name-guard": 1, "recall-tie": 0.8,
                "per-tenant": 2}
