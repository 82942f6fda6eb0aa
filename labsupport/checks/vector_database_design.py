"""The scenario checker of ``07_vector_database_design.ipynb``: client A sees client B's documents.

The learner writes ``tenant_query(collection, tenant, query_embedding, embedder, k=5,
where=None) -> list[str]`` over one shared collection of both clients' documents.
:func:`check_exercise` judges it, row by row, against fixed references:

* zero cross-tenant results over 1,050 hidden queries (questions naming the other
  company, its products and people; vectors placed next to the other tenant's documents);
* date-range results identical to exact numpy search over the tenant's documents;
* per-tenant recall@5 within 0.02 of a collection holding only that tenant's documents;
* a query made with a mismatched embedder (CLS pooling: same length, another space) refused.

Each row is judged on its own (``ex.judge``): a row whose input makes the answer raise
fails alone, and says how to reproduce it, e.g. ``checks.check_isolation(my_answer)``.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import vector_database_design as vdb
from labsupport.explore import vector_database_design as explore
from labsupport.services import vector_database_design as services

EXERCISE_ID = "07_vector_database_design"
SEED = 2024  # the hidden queries' seed
N_TEXT, N_VECTOR = 200, 850  # isolation: questions, and vectors next to the other tenant
N_RANGES = 24  # date ranges compared with exact search
K_RECALL = 5
GUARD_ROW = "a query with a mismatched embedder is refused"

COMPANY_TERMS = {  # what an adversarial query names: the company, its products, its people
    "northwind": ["Northwind Logistics", "RouteWise", "DockHub", "FleetPulse", "NorthwindID",
                  "Priya Raman", "Tom Becker", "Lena Ortiz", "Marcus Hale", "Ines Duarte"],
    "bluefin": ["Bluefin Health", "CareLink", "VitalsBoard", "DoseTrack", "Bluefin Pass",
                "Jonas Lind", "Mei Chen", "Aisha Okafor", "Rafael Souza", "Hannah Vogel"],
}

QueryFunction = Callable[..., list[str]]


def starter_tenant_query(collection: Any, tenant: str, query_embedding: Sequence[float],
                         embedder: vdb.Embedder, k: int = 5,
                         where: dict[str, Any] | None = None) -> list[str]:
    """The code as shipped: one shared collection, and the tenant is never used."""
    result = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                              where=where)
    return result["ids"][0]


@dataclass
class ExerciseScenario:
    """What the checker runs a learner's ``tenant_query`` against."""

    docs: list[vdb.Document]
    by_id: dict[str, vdb.Document]
    vectors: np.ndarray
    embedder: vdb.Embedder  # the one the collections were built with
    wrong_embedder: vdb.Embedder  # same dimension, another vector space: must be refused
    shared: Any  # all tenants, ids as in the files
    dedicated: dict[str, Any]  # one collection per tenant


def build_scenario(embedder: vdb.Embedder, wrong_embedder: vdb.Embedder,
                   location: services.ChromaLocation | None = None,
                   docs: Sequence[vdb.Document] | None = None) -> ExerciseScenario:
    """The shared collection and a dedicated one per tenant, built with ``embedder``."""
    docs = list(docs if docs is not None else vdb.load_documents())
    location = location or services.ChromaLocation(path=services.session_folder())
    tag = re.sub(r"[^a-zA-Z0-9]+", "-", embedder.name).strip("-")[-40:]  # a name per embedder
    shared = explore.shared_collection(location, docs, embedder, name=f"exercise-shared-{tag}")
    dedicated = {t: explore.shared_collection(location, [d for d in docs if d.tenant == t],
                                              embedder, name=f"exercise-only-{t}-{tag}")
                 for t in vdb.TENANTS}
    vectors = embedder([d.title + ". " + d.text for d in docs])
    return ExerciseScenario(docs, {d.id: d for d in docs}, vectors, embedder, wrong_embedder,
                            shared, dedicated)


_SCENARIO: dict[str, ExerciseScenario] = {}


def course_scenario() -> ExerciseScenario:
    """The course model's scenario, built once per process."""
    if "course" not in _SCENARIO:
        _SCENARIO["course"] = build_scenario(vdb.course_embedder(), explore.cls_pooling_embedder())
    return _SCENARIO["course"]


def _random_where(rng: random.Random, docs: Sequence[vdb.Document]) -> dict[str, Any] | None:
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
    topics = [t.replace("_", " ") for t in explore.TOPIC_QUESTIONS]
    for _ in range(n):
        tenant = rng.choice(vdb.TENANTS)
        other = next(t for t in vdb.TENANTS if t != tenant)
        out.append((tenant, rng.choice(templates).format(term=rng.choice(COMPANY_TERMS[other]),
                                                         topic=rng.choice(topics))))
    return out


def _call(answer: QueryFunction, s: ExerciseScenario, tenant: str, vector: np.ndarray, k: int,
          where: dict[str, Any] | None, embedder: vdb.Embedder | None = None) -> list[str]:
    ids = answer(s.shared, tenant, [float(x) for x in vector], embedder or s.embedder, k=k,
                 where=where)
    if not isinstance(ids, list | tuple):
        raise TypeError(f"the function must return a list of ids, got {type(ids).__name__}")
    return [str(i) for i in ids]


def check_isolation(answer: QueryFunction, *, seed: int = SEED,
                    scenario: ExerciseScenario | None = None, n_text: int = N_TEXT,
                    n_vector: int = N_VECTOR) -> ex.Check:
    """Row 1: no query of ``seed``'s hidden set returns another tenant's document."""
    s = scenario or course_scenario()
    rng = random.Random(seed)
    questions = _adversarial_questions(rng, n_text // 2)
    plain = [q for qs in explore.TOPIC_QUESTIONS.values() for q in qs]
    questions += [(rng.choice(vdb.TENANTS), rng.choice(plain))
                  for _ in range(n_text - len(questions))]
    qvectors = s.embedder([q for _, q in questions])
    cases = [(t, q, v) for (t, q), v in zip(questions, qvectors, strict=True)]
    # Vector queries placed next to the other tenant's documents: the worst case.
    nprng = np.random.default_rng(seed)
    for _ in range(n_vector):
        tenant = rng.choice(vdb.TENANTS)
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


def check_date_ranges(answer: QueryFunction, *, seed: int = SEED,
                      scenario: ExerciseScenario | None = None, n: int = N_RANGES) -> ex.Check:
    """Row 2: ``n`` random date ranges give the same top-10 as exact search."""
    s = scenario or course_scenario()
    rng = random.Random(seed + 1)
    plain = [q for qs in explore.TOPIC_QUESTIONS.values() for q in qs]
    texts = [rng.choice(plain) for _ in range(n)]
    qvectors = s.embedder(texts)
    wrong, example = 0, ""
    for text, q in zip(texts, qvectors, strict=True):
        tenant = rng.choice(vdb.TENANTS)
        start = rng.randint(min(d.timestamp for d in s.docs), max(d.timestamp for d in s.docs))
        where = {"$and": [{"timestamp": {"$gte": start}},
                          {"timestamp": {"$lt": start + rng.randint(30, 300) * 86400}}]}
        k = 10
        mask = vdb.filter_mask(s.docs, vdb.scope_where(tenant, where))
        idx, _ = vdb.exact_top_k(s.vectors, q, k, mask)
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


def check_recall(answer: QueryFunction, *, scenario: ExerciseScenario | None = None,
                 k: int = K_RECALL) -> ex.Check:
    """Row 3: each tenant's recall@k within 0.02 of a collection holding only its documents."""
    s = scenario or course_scenario()
    questions = [q for qs in explore.TOPIC_QUESTIONS.values() for q in qs]
    qvectors = s.embedder(questions)
    worst = None
    for tenant in vdb.TENANTS:
        mask = np.array([d.tenant == tenant for d in s.docs])
        yours, dedicated = [], []
        for q in qvectors:
            truth = vdb.exact_top_k(s.vectors, q, k, mask)[1]

            def distances(ids: list[str], q: np.ndarray = q) -> list[float]:
                rows = [s.docs.index(s.by_id[i]) for i in ids if i in s.by_id]
                return sorted(vdb.cosine_distances(s.vectors[rows], q).tolist()) if rows else []

            # Another tenant's document counts as a miss, whatever its distance.
            own = [i for i in _call(answer, s, tenant, q, k, None)
                   if i in s.by_id and s.by_id[i].tenant == tenant]
            yours.append(vdb.recall_at_k(distances(own), truth, k))
            ded = s.dedicated[tenant].query(query_embeddings=[q.tolist()], n_results=k,
                                            include=[])["ids"][0]
            dedicated.append(vdb.recall_at_k(distances(ded), truth, k))
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


def check_embedder_guard(answer: QueryFunction, *,
                         scenario: ExerciseScenario | None = None) -> ex.Check:
    """Row 4: a vector of another embedder (same length, another space) is refused."""
    s = scenario or course_scenario()
    wrong = s.wrong_embedder
    vector = wrong("How do I reset my password?")[0]
    try:
        ids = _call(answer, s, vdb.TENANTS[0], vector, 5, None, embedder=wrong)
    except Exception as exc:  # refusing is the right answer here
        return ex.Check(GUARD_ROW, True,
                        "an exception naming the mismatch", f"{type(exc).__name__}: {exc}"[:160])
    return ex.Check(
        GUARD_ROW, False,
        "an exception naming the mismatch",
        f"returned {len(ids)} results for a {wrong.name} vector on a collection built with "
        f"{(s.shared.metadata or {}).get('embedding_model')}",
        hint="Compare embedder.name and embedder.dimension with the collection's metadata "
             "(embedding_model, embedding_dimension) and raise when they differ.")


def _checks(answer: Any, scenario: ExerciseScenario | None = None) -> Iterator[ex.Check]:
    bad = ex.expect_callable(answer, "your tenant_query")
    if bad:
        yield bad
        return
    s = scenario or course_scenario()
    yield ex.judge(
        f"zero cross-tenant results over {N_TEXT + N_VECTOR} random queries",
        lambda: check_isolation(answer, seed=SEED, scenario=s),
        case=f"{N_TEXT} questions (half name the other company) and {N_VECTOR} vectors "
             f"next to the other tenant's documents, random filters, seed {SEED}",
        reproduce=f"checks.check_isolation(my_answer, seed={SEED})")
    yield ex.judge(
        f"date-range filters match a brute-force search ({N_RANGES} ranges)",
        lambda: check_date_ranges(answer, seed=SEED, scenario=s),
        case=f"{N_RANGES} random 30-300 day ranges, k=10, seed {SEED}",
        reproduce=f"checks.check_date_ranges(my_answer, seed={SEED})")
    yield ex.judge(
        f"per-tenant recall@{K_RECALL} close to a dedicated index",
        lambda: check_recall(answer, scenario=s),
        case=f"every topic question for each tenant, k={K_RECALL}, no extra filter",
        reproduce="checks.check_recall(my_answer)")
    yield ex.judge(
        GUARD_ROW, lambda: check_embedder_guard(answer, scenario=s),
        case="a CLS-pooling vector of “How do I reset my password?” (384 dimensions, "
             "another space)",
        reproduce="checks.check_embedder_guard(my_answer)")


def check_exercise(answer: Any, *, solution_mode: bool = False,
                   scenario: ExerciseScenario | None = None) -> ex.CheckResult:
    """Check the learner's ``tenant_query(collection, tenant, query_embedding, embedder,
    k=5, where=None) -> list[str]`` against the two-client scenario of notebook 07
    (``scenario``: another embedder's, for tests; default the course model's)."""
    return ex.run_checks(EXERCISE_ID, functools.partial(_checks, scenario=scenario), answer,
                         solution_mode=solution_mode)
