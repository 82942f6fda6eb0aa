"""``make bench`` figures of ``07_vector_database_design.ipynb``: index versus scan at scale.

The notebook sweeps ``ef_search`` on 2,900 real MiniLM vectors, where a numpy scan is still
close to the index; :func:`benchmark` repeats it on all 4,900 (plus 100 queries) of
``data/docstrings`` and on 20,000 random unit vectors, where HNSW is clearly faster but
finds far fewer true neighbours, and times filtered against unfiltered queries on the
tenant documents.

From the shell: ``python -m labsupport.bench.vector_database_design`` prints the figures.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from labsupport import vector_database_design as vdb
from labsupport.explore import vector_database_design as explore
from labsupport.services import vector_database_design as services


def benchmark(n: int = 20000, n_queries: int = 100, k: int = 10) -> dict[str, Any]:
    """The recall/QPS frontier (exact numpy vs Chroma HNSW over ef_search) and filtered
    vs unfiltered query latency on the tenant documents."""
    with tempfile.TemporaryDirectory(prefix="labsupport-vdb-bench-") as path:
        location = services.ChromaLocation(path=path)
        _, real = explore.docstring_vectors()
        real_points = [explore.exact_search_point(real[n_queries:], real[:n_queries], k),
                       *explore.sweep_ef_search(location.client(), real[n_queries:],
                                                real[:n_queries], k, prefix="bench-real")]
        vectors = explore.random_unit_vectors(n, seed=0)
        queries = explore.random_unit_vectors(n_queries, seed=1)
        points = [explore.exact_search_point(vectors, queries, k),
                  *explore.sweep_ef_search(location.client(), vectors, queries, k,
                                           prefix="bench")]
        docs = vdb.load_documents()
        embedder = vdb.course_embedder()
        shared = explore.shared_collection(location, docs, embedder, name="bench-shared")
        q = embedder("How do I reset my password?")[0]
        where = {"$and": [{"tenant": {"$eq": "northwind"}}, {"department": {"$in": ["IT"]}}]}
        outcomes = explore.compare_filtering(shared, docs, embedder([d.title + ". " + d.text
                                                                     for d in docs]), q,
                                             "password_reset", where, k=5, repeats=50)
    return {
        "real_vectors": f"{len(real) - n_queries} MiniLM vectors of docstrings, {n_queries} "
                        f"queries, k={k}",
        "real_points": [f"{p.method} ef={p.ef_search}: recall {p.recall:.3f}, {p.qps:.0f} QPS"
                        for p in real_points],
        "vectors": f"{n} random unit vectors x {vectors.shape[1]}, {n_queries} queries, k={k}",
        "frontier": [f"{p.method} ef={p.ef_search}: recall {p.recall:.3f}, {p.qps:.0f} QPS"
                     for p in explore.pareto_frontier(points)],
        "all_points": [f"{p.method} ef={p.ef_search}: recall {p.recall:.3f}, {p.qps:.0f} QPS"
                       for p in points],
        "filtering_ms": {o.method: round(o.latency_ms, 2) for o in outcomes},
    }


def main() -> int:
    print(json.dumps(benchmark(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
