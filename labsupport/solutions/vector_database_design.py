"""Answer key of ``07_vector_database_design.ipynb``: a tenant-scoped query function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labsupport.vector_database_design import Embedder, EmbedderMismatchError


def tenant_query(collection: Any, tenant: str, query_embedding: Sequence[float],
                 embedder: Embedder, k: int = 5,
                 where: dict[str, Any] | None = None) -> list[str]:
    """The ``k`` nearest documents of ``tenant`` that also pass ``where``.

    The tenant clause is added here, in the layer that builds the query, so no caller
    can forget it; the embedder must be the one the collection was built with.
    """
    meta = collection.metadata or {}
    if (meta.get("embedding_model"), meta.get("embedding_dimension")) != (
            embedder.name, embedder.dimension):
        raise EmbedderMismatchError(
            f"collection built with {meta.get('embedding_model')!r}, query made with "
            f"{embedder.name!r}")
    scope = {"tenant": {"$eq": tenant}}
    full_where = {"$and": [scope, where]} if where else scope
    result = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                              where=full_where, include=[])
    return result["ids"][0]
