"""The scenario checker of ``07_vector_database_design.ipynb``: client A sees client B's documents.

The learner writes ``tenant_query(collection, tenant, query_embedding, embedder, k=5,
where=None) -> list[str]`` over one shared collection of both clients' documents.
:func:`check_exercise` judges it, row by row, against fixed references:

* zero cross-tenant results over 600 hidden queries (questions naming the other company,
  its products and people; vectors placed next to the other tenant's documents; caller
  filters that try to leave the tenant);
* date-range results identical to exact numpy search over the tenant's documents;
* per-tenant recall@5 within 0.02 of a collection holding only that tenant's documents;
* queries made with mismatched embedders (CLS pooling: same length, another space; once
  under the course model's own name) refused with ``vdb.EmbedderMismatchError``.

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
from labsupport import quiz as qz
from labsupport import vector_database_design as vdb
from labsupport.checks import vector_database_design_steps as steps
from labsupport.explore import vector_database_design as explore
from labsupport.services import vector_database_design as services

EXERCISE_ID = "07_vector_database_design"
SEED = 2024  # the hidden queries' seed
N_TEXT, N_VECTOR = 200, 400  # isolation: questions, and vectors next to the other tenant
N_RANGES = 24  # date ranges compared with exact search
K_RECALL = 5
GUARD_ROW = "queries with a mismatched embedder are refused"

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
    impostor: vdb.Embedder  # the same name and dimension, another vector space
    shared: Any  # all tenants, ids as in the files
    dedicated: dict[str, Any]  # one collection per tenant


def build_scenario(embedder: vdb.Embedder, wrong_embedder: vdb.Embedder,
                   impostor: vdb.Embedder, location: services.ChromaLocation | None = None,
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
                            impostor, shared, dedicated)


_SCENARIO: dict[str, ExerciseScenario] = {}


def course_scenario() -> ExerciseScenario:
    """The course model's scenario, built once per process."""
    if "course" not in _SCENARIO:
        explore.load_seed(vdb.course_embedder())  # the documents' vectors, shipped
        _SCENARIO["course"] = build_scenario(vdb.course_embedder(), explore.cls_pooling_embedder(),
                                             explore.impostor_embedder())
    return _SCENARIO["course"]


def _random_where(rng: random.Random, docs: Sequence[vdb.Document],
                  tenant: str) -> dict[str, Any] | None:
    """A random extra filter the learner's function must respect (or none). One in three
    tries to leave the tenant: it names the other tenant, with $ne, $in, $or or a nested
    $and; a few are malformed (two top-level keys), which may be refused."""
    other = next(t for t in vdb.TENANTS if t != tenant)
    depts = sorted({d.department for d in docs})
    kind = rng.choice(["none", "none", "department", "access", "dates", "combo", "escape",
                       "escape", "escape", "malformed"])
    if kind == "escape":
        return rng.choice([{"tenant": other}, {"tenant": {"$eq": other}},
                           {"tenant": {"$ne": tenant}}, {"tenant": {"$in": [tenant, other]}},
                           {"$or": [{"tenant": other}, {"department": {"$in": depts}}]},
                           {"$and": [{"tenant": other}, {"timestamp": {"$gte": 0}}]}])
    if kind == "malformed":
        return rng.choice([{"tenant": other, "department": depts[0]},
                           {"department": {"$in": depts}, "tenant": {"$ne": tenant}}])
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
    refused = 0
    for tenant, text, vector in cases:
        where = _random_where(rng, s.docs, tenant)
        try:
            ids = _call(answer, s, tenant, vector, rng.choice([3, 5, 10]), where)
        except Exception:  # refusing a filter that tries to leave the tenant is fine
            if where is None or "tenant" not in str(where):
                raise
            refused += 1
            continue
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
        f"{leaked_queries} of {len(cases)} queries leaked {leaked_docs} documents{example}"
        + (f" ({refused} filters naming a tenant refused)" if refused else ""),
        hint="Every query must carry the tenant filter, combined with the caller's own "
             "filter in an $and, so the caller's clause can narrow the scope but never "
             "widen it. Never trust the question text to pick the tenant.")


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
    """Row 4: vectors of two wrong embedders are refused with the course's error: CLS
    pooling under its own name, and CLS pooling under the course model's name."""
    s = scenario or course_scenario()
    missed = []
    for wrong in (s.wrong_embedder, s.impostor):
        vector = wrong("How do I reset my password?")[0]
        label = f"{wrong.name!r}" + (" (the collection's name, other vectors)"
                                     if wrong.name == s.embedder.name else "")
        try:
            ids = _call(answer, s, vdb.TENANTS[0], vector, 5, None, embedder=wrong)
        except vdb.EmbedderMismatchError:
            continue
        except Exception as exc:  # noqa: BLE001 - another error is not the guard
            missed.append(f"{label}: {type(exc).__name__}: {exc}"[:160])
            continue
        missed.append(f"{label}: returned {len(ids)} results")
    return ex.Check(
        GUARD_ROW, not missed, "vdb.EmbedderMismatchError for both", "; ".join(missed)
        or "both refused",
        hint="Call vdb.check_embedder(collection, embedder): it compares the name, the "
             "dimension and the probe vector recorded in the collection's metadata. A name "
             "alone does not say what a model computes.")


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
        case="CLS-pooling vectors of “How do I reset my password?” (384 dimensions, another "
             "space), one under the course model's own name",
        reproduce="checks.check_embedder_guard(my_answer)")


def check_exercise(answer: Any, *, solution_mode: bool = False,
                   scenario: ExerciseScenario | None = None) -> ex.CheckResult:
    """Check the learner's ``tenant_query(collection, tenant, query_embedding, embedder,
    k=5, where=None) -> list[str]`` against the two-client scenario of notebook 07
    (``scenario``: another embedder's, for tests; default the course model's)."""
    return ex.run_checks(EXERCISE_ID, functools.partial(_checks, scenario=scenario), answer,
                         solution_mode=solution_mode)


# --- the steps and the review quiz ------------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: exact top-k, 2: recall@k, 3: a where, 4: a store
    bound to one tenant)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)


QUIZ = qz.Quiz(EXERCISE_ID, {
    "post-filter": qz.Choice(
        "A query asks the shared collection for its top 5 and then drops the other tenant's "
        "results. What goes wrong?",
        ("Nothing: the other tenant's documents are gone from the answer",
         "Fewer than 5 results come back, sometimes none, and the tenant's own nearest "
         "documents can be missing: filter before (inside) the search, not after it",
         "It leaks the other tenant's documents", "It is only slower"),
        1, "The global top 5 is computed over everyone's documents; dropping the foreign ones "
           "afterwards leaves holes that the tenant's next-nearest documents should have "
           "filled. The Explore panel shows it: post-filtering returns a handful, often zero."),
    "caller-where": qz.Choice(
        "The query layer builds its filter as {\"tenant\": tenant, **caller_where}. What "
        "happens when a caller passes {\"tenant\": \"bluefin\"}, and when a caller passes "
        "{\"$or\": [...]}?",
        ("Both work as intended", "Chroma rejects both",
         "The first leaks Bluefin's documents (the caller's key replaces yours in the merge); "
         "the second is rejected (two top-level keys). Use {\"$and\": [tenant clause, "
         "caller_where]}",
         "The first is rejected, the second leaks"),
        2, "A dict merge lets the last key win, and Chroma wants exactly one top-level key per "
           "filter. An $and of the tenant clause and the caller's clause can only narrow the "
           "scope, whatever the caller writes."),
    "name-guard": qz.Choice(
        "A collection records embedding_model = all-MiniLM-L6-v2. A new deploy embeds the "
        "queries with a build of the same name that pools the [CLS] token instead of the "
        "mean. A guard that compares model names…",
        ("refuses it", "lets it through: the vectors live in another space and retrieval "
         "quietly degrades; compare what the model computes (its vector for a fixed probe "
         "sentence) instead",
         "does not matter: Chroma refuses a vector from another model",
         "does not matter: both have 384 dimensions, so the results are the same"),
        1, "Chroma checks only the length of a vector (and, since 1.0.12, an embedding "
           "function's name). The notebook measures the damage on its documents: recall@5 "
           "against the true neighbours falls to about 0.5 and a fifth of the results go "
           "off-topic, with no error anywhere. A probe vector recorded at creation catches it."),
    "recall-tie": qz.Numeric(
        "The true 5 nearest distances are 0.10, 0.12, 0.15, 0.20 and 0.25. An index returns "
        "0.10, 0.12, 0.15, 0.2505 and 0.31. What is the ANN-Benchmarks recall@5 (tie margin "
        "0.001)?", 0.8, 0.001, "",
        "The threshold is the true 5th distance plus the margin, 0.251. Four results are within "
        "it (0.2505 counts as a tie with 0.25); 0.31 is not: 4 / 5 = 0.8."),
    "per-tenant": qz.Choice(
        "What does Pinecone's multitenancy guide recommend for isolating tenants in a "
        "serverless index?",
        ("A tenant_id metadata filter on one shared namespace",
         "A separate index per tenant, always", "One namespace per tenant: a query scans "
         "only that tenant's data, costs less, and a wrong filter value cannot cross tenants",
         "Encrypting each tenant's vectors"),
        2, "\"Design for multitenancy\": the most efficient way is a namespace per tenant; it "
           "calls filtering a shared namespace by high-cardinality ids an anti-pattern (cost "
           "scales with the whole namespace). Chroma's own guide recommends a collection per "
           "user or organisation for multi-tenant requirements."),
})


def check_quiz(answers: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Judge the review quiz answered in code (question id -> option number or value)."""
    return QUIZ.answer(answers, solution_mode=solution_mode)
