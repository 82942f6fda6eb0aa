"""Wrong answers for ``07_vector_database_design``: tenant queries that still leak or miss.

Each builder returns a ``tenant_query(collection, tenant, query_embedding, embedder, k=5,
where=None) -> list[str]`` as a learner would write it in the notebook's starter cell.
"""

from __future__ import annotations

from labsupport import vector_database_design as vdb
from labsupport.checks import vector_database_design as checks
from labsupport.solutions.vector_database_design import tenant_query as answer_key

from . import Exercise, WrongAnswer


def starter():
    """The notebook's untouched starter cell."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        """Ids of the k nearest documents. (STARTER: edit this cell.)"""
        result = collection.query(query_embeddings=[list(query_embedding)], n_results=k, where=where)
        return result["ids"][0]

    my_answer = tenant_query
    return my_answer


def ignores_callers_where():
    """Scopes to the tenant but drops the caller's filter: date ranges come back wrong."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        return answer_key(collection, tenant, query_embedding, embedder, k=k)

    return tenant_query


def post_filters_global_top_k():
    """Searches everyone's documents, then drops the other tenant's: fewer than k left."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        ids = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                               where=where, include=[])["ids"][0]
        return [i for i in ids if i.startswith(tenant + "-")]

    return tenant_query


def no_embedder_guard():
    """The tenant filter is right, but any embedder's vector is searched."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        scope = {"tenant": {"$eq": tenant}}
        full_where = {"$and": [scope, where]} if where else scope
        return collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                                where=full_where, include=[])["ids"][0]

    return tenant_query


def merges_where_keys():
    """Adds the tenant as a second top-level key: Chroma rejects any caller filter."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        full_where = {**(where or {}), "tenant": tenant}
        return collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                                where=full_where, include=[])["ids"][0]

    return tenant_query


def returns_nothing():
    """Never leaks because it never answers."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        return []

    return tenant_query


EXERCISES = [
    Exercise(
        id="07_vector_database_design",
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: answer_key,
        gallery=[
            WrongAnswer("starter", "never uses the tenant: Northwind's users get Bluefin's "
                        "documents, the scenario's leak", starter, "cross-tenant"),
            WrongAnswer("ignores the caller's where", "tenant-safe, but a user asking for "
                        "last quarter's policies gets any date", ignores_callers_where,
                        "date-range"),
            WrongAnswer("post-filters a global top-k", "no leak, but the other tenant's "
                        "neighbours take the places: fewer than k results",
                        post_filters_global_top_k, "recall"),
            WrongAnswer("no embedder guard", "a vector from another model is searched and "
                        "returns confident nonsense", no_embedder_guard, "mismatched embedder"),
            WrongAnswer("two top-level where keys", "Chroma refuses a where dict with two "
                        "keys: every filtered query raises", merges_where_keys, "date-range"),
            WrongAnswer("returns nothing", "no leak because no answer: users get no documents",
                        returns_nothing, "recall"),
        ],
    ),
]
