"""Wrong answers for ``07_vector_database_design``: the four steps, and tenant queries that
still leak or miss.

Scenario builders return a ``tenant_query(collection, tenant, query_embedding, embedder,
k=5, where=None) -> list[str]`` as a learner would write it in the notebook's starter cell.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from labsupport import vector_database_design as vdb
from labsupport.checks import vector_database_design as checks
from labsupport.solutions import vector_database_design as key
from labsupport.solutions.vector_database_design import tenant_query as answer_key

from . import Exercise, WrongAnswer, step

# --- the steps ------------------------------------------------------------------------------


def starter_top_k(matrix, query, k):
    raise NotImplementedError("Step 1")


def dot_product_top_k(matrix, query, k):
    """Ranks by the dot product: long rows win whatever their direction."""
    scores = np.asarray(matrix) @ np.asarray(query)
    order = np.argsort(-scores)[:k]
    return order, 1.0 - scores[order]


def farthest_first(matrix, query, k):
    """Cosine, but sorted the wrong way round."""
    order, distances = key.exact_top_k(matrix, query, len(matrix))
    return order[::-1][:k], distances[::-1][:k]


def starter_recall(found, truth, k):
    raise NotImplementedError("Step 2")


def recall_by_exact_match(found, truth, k):
    """Counts only distances equal to a true one: ties within the margin are misses."""
    true = list(truth)[:k]
    return sum(1 for d in list(found)[:k] if d in true) / len(true) if true else 1.0


def recall_over_k(found, truth, k):
    """Divides by k even when fewer true neighbours exist."""
    true = list(truth)[:k]
    if not true:
        return 1.0
    return sum(1 for d in list(found)[:k] if d <= true[-1] + 1e-3) / k


def starter_where(start, end, departments):
    raise NotImplementedError("Step 3")


def two_top_level_keys(start, end, departments):
    """The range in one dict and the departments beside it: Chroma refuses it."""
    where = key.dates_and_departments(start, end, departments)
    return {"timestamp": where["$and"][0]["timestamp"], "department": {"$in": departments}}


def local_time_range(start, end, departments):
    """Turns the dates into seconds in the machine's time zone, not UTC."""
    def seconds(day):
        return int(datetime.fromisoformat(day).timestamp())

    return {"$and": [{"timestamp": {"$gte": seconds(start)}}, {"timestamp": {"$lt": seconds(end)}},
                     {"department": {"$in": list(departments)}}]}


def end_included(start, end, departments):
    """<= end: a document stamped exactly at midnight of the end day counts."""
    where = key.dates_and_departments(start, end, departments)
    where["$and"][1] = {"timestamp": {"$lte": where["$and"][1]["timestamp"]["$lt"]}}
    return where


class StarterStore:
    def __init__(self, collection, tenant):
        raise NotImplementedError("Step 4")


class CallerWhereWins(key.TenantStore):
    """Merges the caller's filter over the tenant clause: the caller can pick the tenant."""

    def _scope(self, where=None):
        merged = {"tenant": self._tenant, **(where or {})}
        return {"$and": [{k: v} for k, v in merged.items()]} if len(merged) > 1 else merged


class NoIdPrefix(key.TenantStore):
    """Stores ids as given: the second tenant's doc-1 replaces the first's."""

    def add(self, ids, vectors, metadatas):
        self._collection.upsert(ids=[f"{i}" for i in ids], embeddings=vectors,
                                metadatas=[{**m, "tenant": self._tenant} for m in metadatas])

    def query(self, vector, k=5, where=None):
        return self._collection.query(query_embeddings=[list(vector)], n_results=k,
                                      where=self._scope(where), include=[])["ids"][0]


class TrimsTenant(key.TenantStore):
    """Strips and lower-cases the tenant id instead of refusing it."""

    def __init__(self, collection, tenant):
        super().__init__(collection, str(tenant).strip().lower() or "anon")


class ExposesCollection(key.TenantStore):
    """Right scoping, but the collection is public: anyone can query it unscoped."""

    def __init__(self, collection, tenant):
        super().__init__(collection, tenant)
        self.collection = collection


# --- the scenario ---------------------------------------------------------------------------


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
        full_where = {**(where or {}), "tenant": tenant}  # the caller's "tenant" is replaced,
        # but a caller's "$or" or second key makes two top-level keys
        return collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                                where=full_where, include=[])["ids"][0]

    return tenant_query


def returns_nothing():
    """Never leaks because it never answers."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        return []

    return tenant_query


def callers_where_wins():
    """Puts the caller's filter last in the merge: the caller can name the other tenant."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        full_where = {"tenant": tenant, **(where or {})}
        if len(full_where) > 1:
            full_where = {"$and": [{k_: v} for k_, v in full_where.items()]}
        return collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                                where=full_where, include=[])["ids"][0]

    return tenant_query


def name_only_guard():
    """Compares the embedder's name and dimension only: an impostor of the same name passes."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        meta = collection.metadata or {}
        if (meta.get("embedding_model"), meta.get("embedding_dimension")) != (
                embedder.name, embedder.dimension):
            raise vdb.EmbedderMismatchError("another model")
        return no_embedder_guard()(collection, tenant, query_embedding, embedder, k, where)

    return tenant_query


def generic_guard_error():
    """Refuses a foreign embedder, but with a ValueError of its own, not the course's error."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        meta = collection.metadata or {}
        if meta.get("embedding_probe") != embedder.as_metadata()["embedding_probe"]:
            raise ValueError("wrong embedder")
        return no_embedder_guard()(collection, tenant, query_embedding, embedder, k, where)

    return tenant_query


def tenant_from_the_text():
    """Picks the tenant the question seems to be about: a question naming Bluefin gets
    Bluefin's documents whoever asks (here: whichever tenant's documents are nearest)."""
    def tenant_query(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        nearest = collection.query(query_embeddings=[list(query_embedding)], n_results=1,
                                   include=["metadatas"])["metadatas"][0]
        guessed = nearest[0]["tenant"] if nearest else tenant
        return answer_key(collection, guessed, query_embedding, embedder, k, where)

    return tenant_query


EXERCISES = [
    step(checks, 1, lambda: key.exact_top_k, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_top_k, "runs"),
        WrongAnswer("dot product", "long rows win whatever their direction",
                    lambda: dot_product_top_k, "random matrix"),
        WrongAnswer("farthest first", "sorted the wrong way round", lambda: farthest_first,
                    "random matrix"),
    ]),
    step(checks, 2, lambda: key.recall_at_k, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_recall, "runs"),
        WrongAnswer("exact distance match", "a tie within the margin counts as a miss",
                    lambda: recall_by_exact_match, "tie"),
        WrongAnswer("divides by k", "fewer true neighbours than k exist: recall below 1 for a "
                    "perfect answer", lambda: recall_over_k, "fewer true neighbours"),
    ]),
    step(checks, 3, lambda: key.dates_and_departments, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: starter_where, "runs"),
        WrongAnswer("two top-level keys", "Chroma refuses it", lambda: two_top_level_keys,
                    "Chroma accepts"),
        WrongAnswer("local time", "New York's midnight is not UTC's", lambda: local_time_range,
                    "keeps exactly"),
        WrongAnswer("end included", "the end day's midnight counts", lambda: end_included,
                    "keeps exactly"),
    ]),
    step(checks, 4, lambda: key.TenantStore, [
        WrongAnswer("starter", "raises NotImplementedError", lambda: StarterStore, "runs"),
        WrongAnswer("the caller's where wins", "a filter naming the other tenant leaks it",
                    lambda: CallerWhereWins, "200 queries"),
        WrongAnswer("no id prefix", "the second tenant's doc-1 replaces the first's",
                    lambda: NoIdPrefix, "same ids"),
        WrongAnswer("trims the tenant", '"acme\\n" and "Acme" become "acme"',
                    lambda: TrimsTenant, "bad tenant ids"),
        WrongAnswer("public collection", "store.collection is an unscoped way in",
                    lambda: ExposesCollection, "unscoped"),
    ]),
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
            WrongAnswer("the caller's where replaces the tenant", "a caller's {\"tenant\": "
                        "\"bluefin\"} wins the merge", callers_where_wins, "cross-tenant"),
            WrongAnswer("tenant from the query text", "the question, not the caller, picks "
                        "the tenant", tenant_from_the_text, "cross-tenant"),
            WrongAnswer("no embedder guard", "a vector from another model is searched and "
                        "returns confident nonsense", no_embedder_guard, "mismatched embedder"),
            WrongAnswer("name-only embedder guard", "an impostor with the model's name and "
                        "another pooling passes", name_only_guard, "mismatched embedder"),
            WrongAnswer("the guard's own error", "refuses, but not with "
                        "vdb.EmbedderMismatchError", generic_guard_error, "mismatched embedder"),
            WrongAnswer("two top-level where keys", "Chroma refuses a where dict with two "
                        "keys: every filtered query raises", merges_where_keys, "date-range"),
            WrongAnswer("returns nothing", "no leak because no answer: users get no documents",
                        returns_nothing, "recall"),
        ],
    ),
    Exercise(
        id="07_vector_database_design/quiz", check=lambda a: checks.check_quiz(a),
        answer_key=lambda: key.QUIZ_ANSWERS,
        gallery=[
            WrongAnswer("post-filtering is fine", "believes dropping foreign results is enough",
                        lambda: {**key.QUIZ_ANSWERS, "post-filter": 0}, "post-filter"),
            WrongAnswer("exact-match recall", "misses the tie margin",
                        lambda: {**key.QUIZ_ANSWERS, "recall-tie": 0.6}, "recall-tie"),
        ],
    ),
]
