"""The four "Your turn" step checks of ``07_vector_database_design.ipynb``.

Each runs the learner's code on inputs the notebook never shows and compares with an
independent reference (numpy brute force, Chroma's own ``where`` validator and engine):

1. ``exact_top_k``: the k smallest cosine distances, on unnormalised random matrices;
2. ``recall_at_k``: ANN-Benchmarks' recall (a tie with the k-th true distance counts);
3. a ``where`` for a date range and departments: Chroma accepts it, and it keeps exactly
   the records a brute-force filter keeps, in UTC whatever the machine's time zone;
4. a store bound to one tenant: 200 queries, five in seven with filters that try to leave
   it, never leak; ids of two tenants never collide; no method takes a tenant.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import vector_database_design as vdb
from labsupport.services import vector_database_design as services

SEED = 77
DAY = 86_400  # seconds


# --- Step 1: exact top-k ------------------------------------------------------------------

def _top_k_row(fn: Callable[..., Any], matrix: np.ndarray, query: np.ndarray, k: int,
               name: str, hint: str) -> ex.Check:
    idx, dist = fn(matrix, query, k)
    idx = [int(i) for i in np.asarray(idx).ravel()]
    dist = np.asarray(dist, dtype=float).ravel()
    want = vdb.exact_top_k(matrix, query, k)[1]
    true_of = vdb.cosine_distances(matrix, query)  # the distance of every row
    ok = (len(idx) == len(want) == len(dist) and np.allclose(dist, want, atol=1e-5)
          and np.allclose(true_of[idx], dist, atol=1e-5) if idx else len(want) == 0)
    found = (f"{len(idx)} rows, distances {np.round(dist[:4], 4).tolist()}"
             + ("…" if len(dist) > 4 else ""))
    return ex.Check(name, bool(ok), f"{len(want)} rows, distances {np.round(want[:4], 4).tolist()}"
                    + ("…" if len(want) > 4 else ""), found, hint=hint)


def _step_1_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED)
    for case in range(3):
        matrix = rng.standard_normal((300, 24)) * rng.uniform(0.1, 10, (300, 1))  # lengths vary
        query = rng.standard_normal(24) * 3
        yield _top_k_row(fn, matrix, query, 7, f"random matrix {case + 1}: the 7 nearest by cosine",
                         "Cosine distance is 1 - (row · query) / (|row| |query|): divide by both "
                         "norms. The rows here are not unit length, so a plain dot product "
                         "ranks long rows first.")
    matrix = rng.standard_normal((5, 8))
    yield _top_k_row(fn, matrix, rng.standard_normal(8), 9, "k larger than the matrix: every row",
                     "Return all rows when k is larger than their number, nearest first.")
    yield _top_k_row(fn, matrix, rng.standard_normal(8), 0, "k = 0: nothing", "k = 0 asks for "
                     "no rows: return empty arrays.")
    twins = np.vstack([matrix, matrix[:2] * 5.0])  # same directions, longer: same distances
    yield _top_k_row(fn, twins, matrix[0] + 0.01, 3, "rows that tie",
                     "A row and the same row five times longer have the same cosine distance.")


def step_1_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your exact_top_k"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _step_1_rows(fn), "exact_top_k runs",
                                 f"random matrices of seed {SEED}")


# --- Step 2: recall@k ---------------------------------------------------------------------

def _recall_cases(rng: np.random.Generator) -> list[tuple[str, list[float], list[float], int]]:
    truth = sorted(rng.uniform(0.1, 0.6, 10).round(4).tolist())
    return [
        ("the exact result", truth, truth, 10),
        ("half of the neighbours", truth[:5] + [0.9] * 5, truth, 10),
        ("a tie with the k-th true distance counts", truth[:9] + [truth[9] + 0.0005], truth, 10),
        ("just past the tie margin does not", truth[:9] + [truth[9] + 0.002], truth, 10),
        ("results beyond k are ignored", truth[:3] + [0.95] * 2 + truth[3:5], truth, 5),
        ("fewer results than k", truth[:4], truth, 10),
        ("fewer true neighbours than k exist", truth[:3], truth[:3], 10),
        ("no true neighbours at all", [], [], 5),
    ]


def _step_2_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED + 1)
    for name, found, truth, k in _recall_cases(rng):
        got = ex.as_number(fn(list(found), list(truth), k), "a recall")
        want = vdb.recall_at_k(found, truth, k)
        yield ex.Check(name, abs(got - want) < 1e-9, f"{want:.3f}", f"{got:.3f}",
                       hint="Count the first k results whose distance is at most the true k-th "
                            "distance + 0.001, and divide by the number of true neighbours "
                            "(at most k). No true neighbours: 1.0.")
    worst = 0.0
    for _ in range(200):
        truth = sorted(rng.uniform(0, 1, int(rng.integers(1, 15))).tolist())
        found = sorted(rng.uniform(0, 1, int(rng.integers(0, 15))).tolist())
        k = int(rng.integers(1, 12))
        worst = max(worst, abs(ex.as_number(fn(found, truth, k), "a recall")
                               - vdb.recall_at_k(found, truth, k)))
    yield ex.Check("200 random cases", worst < 1e-9, "the reference's value every time",
                   f"largest difference {worst:.3f}")


def step_2_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your recall_at_k"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _step_2_rows(fn), "recall_at_k runs",
                                 f"distances of seed {SEED + 1}")


# --- Step 3: a where for dates and departments --------------------------------------------

DEPARTMENTS = ("engineering", "finance", "hr", "it", "legal", "operations", "sales", "security")


@contextlib.contextmanager
def _time_zone(name: str) -> Iterator[None]:
    """Run with the process's local time zone set to ``name`` (POSIX): code that turns an
    ISO date into seconds with local time gets another answer than UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def _utc(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp())


def _records(rng: np.random.Generator, start: str, end: str,
             departments: list[str]) -> list[dict[str, Any]]:
    """Random metadata, plus records a second either side of each boundary (in one of
    ``departments``, so that only the dates decide) and five hours after each (New York's
    midnight in UTC)."""
    lo, hi = _utc(start), _utc(end)
    random_ = [{"timestamp": int(t), "department": str(rng.choice(DEPARTMENTS))}
               for t in rng.integers(lo - 40 * DAY, hi + 40 * DAY, 120)]
    edges = [lo - 1, lo, lo + 1, lo + 5 * 3600 - 1, hi - 1, hi, hi + 1, hi + 5 * 3600 - 1]
    return random_ + [{"timestamp": t, "department": departments[0]} for t in edges]


def _step_3_rows(fn: Callable[..., Any], collection_for: Callable[[list[dict]], Any]
                 ) -> Iterator[ex.Check]:
    from chromadb.api.types import validate_where

    rng = np.random.default_rng(SEED + 2)
    cases = [("2024-03-01", "2024-04-01", ["finance", "legal"]),
             ("2023-12-30", "2024-01-02", ["it"]),
             ("2024-07-15", "2024-10-15", ["hr", "sales", "security"])]
    for start, end, departments in cases:
        with _time_zone("America/New_York"):
            where = fn(start, end, list(departments))
        case = f"{start} to {end}, {departments}"
        try:
            validate_where(where)
            problem = ""
        except Exception as exc:  # noqa: BLE001 - Chroma's message is the finding
            problem = f"{type(exc).__name__}: {exc}"
        yield ex.Check(f"Chroma accepts it ({case})", not problem, "a valid where",
                       problem or "valid", hint="Chroma wants one top-level key: put the "
                       "clauses in {\"$and\": [...]}, one operator per field.")
        if problem:
            return
        records = _records(rng, start, end, departments)
        lo, hi = _utc(start), _utc(end)
        want = [lo <= r["timestamp"] < hi and r["department"] in departments for r in records]
        got = [vdb.matches(r, where) for r in records]
        wrong = [r for r, g, w in zip(records, got, want, strict=True) if g != w]
        yield ex.Check(f"keeps exactly the right records ({case})", not wrong,
                       f"{sum(want)} of {len(records)} records (start included, end excluded, UTC)",
                       f"{sum(got)}; wrong on {len(wrong)}, e.g. "
                       f"{datetime.fromtimestamp(wrong[0]['timestamp'], UTC):%Y-%m-%d %H:%M:%S} "
                       f"UTC, {wrong[0]['department']}" if wrong else f"{sum(got)}",
                       hint="timestamp >= start and < end, both in UTC seconds: "
                       "datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp(). (This "
                       "row runs your function in New York's time zone.) department $in the "
                       "list.")
        collection = collection_for(records)
        ids = set(collection.get(where=where, include=[])["ids"])
        expected = {f"r{i}" for i, w in enumerate(want) if w}
        yield ex.Check(f"Chroma returns the same records ({case})", ids == expected,
                       f"{len(expected)} records", f"{len(ids)} records, {len(ids - expected)} "
                       f"not expected, {len(expected - ids)} missing",
                       hint="Store and compare the same types: timestamps are ints.")


def step_3_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your where function"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="vdb-step3-") as tmp:
        client = services.ChromaLocation(path=tmp).client()
        made = iter(range(10))

        def collection_for(records: list[dict]) -> Any:
            collection = client.create_collection(f"records-{next(made)}", embedding_function=None)
            collection.add(ids=[f"r{i}" for i in range(len(records))],
                           embeddings=[[1.0, 0.0]] * len(records), metadatas=records)
            return collection

        yield from ex.rows_or_raised(lambda: _step_3_rows(fn, collection_for),
                                     "your where function runs",
                                     "three date ranges with departments, in New York's time zone")


# --- Step 4: a store bound to one tenant ---------------------------------------------------

TENANTS = ("acme", "globex")  # names the notebook never uses
BAD_TENANTS = ["acme\n", "Acme", "", "ac", "acme corp", {"$ne": "acme"}, None, "acme/x"]
DIM = 16


def _adversarial_wheres(own: str, other: str) -> list[dict[str, Any] | None]:
    return [None, {"department": "finance"}, {"tenant": other}, {"tenant": {"$ne": own}},
            {"tenant": {"$in": [own, other]}},
            {"$or": [{"tenant": other}, {"department": {"$in": list(DEPARTMENTS)}}]},
            {"$and": [{"tenant": other}, {"timestamp": {"$gte": 0}}]}]


def _step_4_rows(cls: Any, collection: Any) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED + 3)
    refused = []
    for bad in BAD_TENANTS:
        try:
            cls(collection, bad)
        except vdb.TenantNameError as exc:
            if bad and isinstance(bad, str) and bad.strip() and bad.strip() not in str(exc):
                refused.append(f"{bad!r}: the message does not name it")
            continue
        except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
            refused.append(f"{bad!r}: {type(exc).__name__}")
            continue
        refused.append(f"{bad!r}: accepted")
    yield ex.Check("bad tenant ids refused", not refused,
                   f"vdb.TenantNameError naming each of {len(BAD_TENANTS)} bad ids",
                   "; ".join(refused) or "all refused", hint="Call vdb.check_tenant(tenant) "
                   "first: a full match of [a-z0-9][a-z0-9_-]{1,40}[a-z0-9], no trimming.")
    stores = {t: cls(collection, t) for t in TENANTS}
    vectors = {t: rng.standard_normal((30, DIM)) for t in TENANTS}
    metas = {t: [{"department": str(rng.choice(DEPARTMENTS)), "timestamp": int(i)}
                 for i in range(30)] for t in TENANTS}
    ids = [f"doc-{i}" for i in range(30)]  # the same ids in both tenants
    for t in TENANTS:
        stores[t].add(list(ids), vectors[t].tolist(), [dict(m) for m in metas[t]])
    counts = {t: stores[t].count() for t in TENANTS}
    yield ex.Check("two tenants with the same ids keep 30 documents each",
                   counts == dict.fromkeys(TENANTS, 30), "30 and 30", f"{counts}",
                   hint="Prefix every id with the tenant (\"acme/doc-1\"), or one tenant's "
                   "upsert replaces the other's document.")
    try:
        stores["acme"].add(["doc-x"], [vectors["acme"][0].tolist()], [{"tenant": "globex"}])
        smuggled = "accepted"
    except vdb.TenantScopeError:
        smuggled = ""
    except Exception as exc:  # noqa: BLE001 - the wrong error is the finding
        smuggled = f"{type(exc).__name__}: {exc}"
    yield ex.Check("a document labelled with another tenant is refused", not smuggled,
                   "vdb.TenantScopeError", smuggled or "refused",
                   hint="add() sets the tenant itself; metadata that names another tenant "
                   "raises vdb.TenantScopeError.")
    wrong, example = 0, ""
    for n in range(200):
        own, other = TENANTS[n % 2], TENANTS[1 - n % 2]
        where = _adversarial_wheres(own, other)[n % 7]
        k = int(rng.integers(1, 8))
        q = rng.standard_normal(DIM)
        try:
            got = stores[own].query(q.tolist(), k, where)
        except Exception:  # noqa: BLE001 - refusing a filter that names a tenant is fine
            if "tenant" not in str(where):
                raise
            continue
        # The truth: the caller's filter applied to this tenant's documents only. A filter
        # that names the other tenant keeps nothing here.
        keep = np.array([vdb.matches({**m, "tenant": own}, where) for m in metas[own]])
        truth = {ids[i] for i in vdb.exact_top_k(vectors[own], q, k, keep)[0]}
        got = {str(g) for g in got}
        if got != truth:
            wrong += 1
            example = example or (f"{own}, where={where}, k={k}: {sorted(got)[:3]} instead of "
                                  f"{sorted(truth)[:3]}")
    yield ex.Check("200 queries, five in seven with filters that try to leave the tenant",
                   not wrong,
                   "the tenant's own nearest documents that pass the filter, ids as given",
                   f"{wrong} of 200 differ" + (f"; e.g. {example}" if example else ""),
                   hint="Combine {\"tenant\": own} with the caller's where in an $and: the "
                   "caller's clause can narrow the scope, never widen it. Return the ids "
                   "without your prefix.")
    exposed = [name for name, m in inspect.getmembers(stores["acme"], callable)
               if not name.startswith("_") and ({"tenant", "namespace", "collection"}
                                                 & set(inspect.signature(m).parameters))]
    exposed += [name for name, value in vars(stores["acme"]).items()
                if not name.startswith("_") and value is collection]
    yield ex.Check("no unscoped way in", not exposed,
                   "no public method that takes a tenant, no public attribute holding the "
                   "collection", ", ".join(exposed) or "none",
                   hint="Keep the collection in self._collection and the tenant fixed at "
                   "construction: a caller who can reach either can leave the scope.")


def step_4_checks(cls: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(cls, "your TenantStore class"):
        yield bad
        return
    with tempfile.TemporaryDirectory(prefix="vdb-step4-") as tmp:
        client = services.ChromaLocation(path=tmp).client()
        collection = client.create_collection(  # vectors given: no embedding function
            "step4", embedding_function=None, configuration={"hnsw": {"space": "cosine"}})
        yield from ex.rows_or_raised(lambda: _step_4_rows(cls, collection),
                                     "your store runs",
                                     f"tenants {TENANTS}, 30 random {DIM}-d vectors each")
