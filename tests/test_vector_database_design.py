"""Tests of labsupport.vector_database_design (and its checks, explore, services layers)
and its data set, data/tenants/.

References are independent of the code under test: numpy argsort for exact search, a
plain Python predicate for filters, Chroma's own answers for the store. Most tests use
a small hash embedder so they run without the 0.8 GB model.
"""

import hashlib
import json
import random
import re
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from labsupport import vector_database_design as vdb
from labsupport.checks import vector_database_design as checks
from labsupport.explore import vector_database_design as explore
from labsupport.services import vector_database_design as services

DOCS = vdb.load_documents()


def _hash_encode(texts: list[str]) -> np.ndarray:
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(32)
        rows.append(v / np.linalg.norm(v))
    return np.array(rows, dtype=np.float32)


FAKE = vdb.Embedder("test-hash-32", 32, _hash_encode)
OTHER = vdb.Embedder("test-hash-32-other", 32, _hash_encode)


# --- the data set ---------------------------------------------------------------------


def test_each_tenant_has_at_least_150_documents_with_the_schema():
    for tenant in vdb.TENANTS:
        lines = (vdb.DATA_DIR / f"{tenant}.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert len(rows) >= 150
        for row in rows:
            assert row["tenant"] == tenant
            assert row["department"] in {"IT", "Finance", "HR", "Operations", "Security",
                                         "Engineering"}
            assert row["access_level"] in {"public", "internal", "confidential"}
            assert isinstance(row["timestamp"], int)
            assert datetime.fromtimestamp(row["timestamp"], UTC).date().isoformat() == row["date"]
            assert "2023-01-01" <= row["date"] <= "2025-06-30"
            assert row["title"] and 50 < len(row["text"]) < 1000


def test_ids_are_unique_and_texts_unique_within_a_tenant():
    assert len({d.id for d in DOCS}) == len(DOCS)
    for tenant in vdb.TENANTS:
        texts = [d.text for d in DOCS if d.tenant == tenant]
        assert len(set(texts)) == len(texts)


def test_topics_overlap_across_tenants_but_names_do_not():
    topics = {t: {d.topic for d in DOCS if d.tenant == t} for t in vdb.TENANTS}
    assert {"password_reset", "expenses", "incident_response"} <= topics["northwind"] & topics["bluefin"]
    for tenant in vdb.TENANTS:
        other = next(t for t in vdb.TENANTS if t != tenant)
        own_text = " ".join(d.text for d in DOCS if d.tenant == tenant)
        assert not any(term in own_text for term in checks.COMPANY_TERMS[other])


def test_no_document_uses_the_words_of_the_meaning_demo():
    # keeps the notebook's "meaning, not words" demo honest: only the embedding can connect
    # "I forgot my login" with the password-reset documents
    for d in DOCS:
        words = set(re.findall(r"[a-z]+", (d.title + " " + d.text).lower()))
        assert not words & {"forgot", "forget", "login"}, d.id


# --- exact search, recall, filters ----------------------------------------------------


def test_exact_top_k_matches_argsort_with_and_without_mask():
    rng = np.random.default_rng(0)
    m, q = rng.standard_normal((500, 16)), rng.standard_normal(16)
    mask = rng.random(500) < 0.3
    ref = 1 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    idx, dist = vdb.exact_top_k(m, q, 10)
    assert list(idx) == list(np.argsort(ref)[:10])
    np.testing.assert_allclose(dist, np.sort(ref)[:10], rtol=1e-9)
    idx, _ = vdb.exact_top_k(m, q, 10, mask)
    masked = np.where(mask, ref, np.inf)
    assert list(idx) == list(np.argsort(masked)[:10])
    assert len(vdb.exact_top_k(m, q, 10, np.zeros(500, bool))[0]) == 0


def test_recall_counts_ties_within_the_kth_distance():
    assert vdb.recall_at_k([0.1, 0.2, 0.3], [0.1, 0.2, 0.3], 3) == 1.0
    assert vdb.recall_at_k([0.1, 0.2, 0.3], [0.1, 0.2, 0.25], 3) == pytest.approx(2 / 3)
    assert vdb.recall_at_k([0.1, 0.2, 0.3005], [0.1, 0.2, 0.3], 3) == 1.0  # tie within 1e-3


def _random_where(rng: random.Random):
    lo = rng.randint(1672531200, 1751241600)
    options = [
        {"department": {"$in": rng.sample(["IT", "HR", "Finance", "Security"], 2)}},
        {"$and": [{"timestamp": {"$gte": lo}}, {"timestamp": {"$lt": lo + 200 * 86400}}]},
        {"$and": [{"access_level": {"$ne": "confidential"}}, {"topic": "expenses"}]},
        {"$or": [{"department": "IT"}, {"timestamp": {"$lte": lo}}]},
        None,
    ]
    return rng.choice(options)


@pytest.fixture(scope="module")
def location(tmp_path_factory):
    return services.ChromaLocation(path=str(tmp_path_factory.mktemp("chroma")))


@pytest.fixture(scope="module")
def shared(location):
    return explore.shared_collection(location, DOCS, FAKE, name="test-shared")


def test_chroma_where_filters_equal_the_brute_force_evaluator(shared):
    rng = random.Random(3)
    for _ in range(15):
        tenant = rng.choice(vdb.TENANTS)
        where = vdb.scope_where(tenant, _random_where(rng))
        got = set(shared.get(where=where, include=[])["ids"])
        expected = {d.id for d, keep in zip(DOCS, vdb.filter_mask(DOCS, where), strict=True) if keep}
        assert got == expected, where


def test_filtered_query_equals_exact_search_over_the_filtered_documents(shared):
    vectors = FAKE([d.title + ". " + d.text for d in DOCS])
    rng = random.Random(4)
    for _ in range(10):
        where = vdb.scope_where(rng.choice(vdb.TENANTS), _random_where(rng))
        q = vectors[rng.randrange(len(DOCS))]
        idx, _ = vdb.exact_top_k(vectors, q, 8, vdb.filter_mask(DOCS, where))
        got = shared.query(query_embeddings=[q.tolist()], n_results=8, where=where,
                           include=[])["ids"][0]
        assert set(got) == {DOCS[i].id for i in idx}


# --- tenant isolation -----------------------------------------------------------------


@pytest.mark.parametrize("design", vdb.DESIGNS)
def test_isolation_property_no_read_leaves_the_tenant(location, design):
    stores = vdb.load_tenant_stores(location, design, DOCS, FAKE)
    rng = random.Random(hash(design) % 1000)
    vectors = FAKE([d.title + ". " + d.text for d in DOCS])
    for _ in range(60):
        tenant = rng.choice(vdb.TENANTS)
        # queries sit on the *other* tenant's documents: the worst case for a leak
        target = rng.choice([i for i, d in enumerate(DOCS) if d.tenant != tenant])
        hits = stores[tenant].query_vector(vectors[target], rng.choice([1, 5, 20]),
                                           _random_where(rng), embedder=FAKE)
        assert all(h.tenant == tenant for h in hits)
    for tenant, store in stores.items():
        assert store.count() == sum(d.tenant == tenant for d in DOCS)


def test_a_store_refuses_writes_and_reads_outside_its_tenant(location):
    stores = vdb.load_tenant_stores(location, "shared", DOCS, FAKE)
    north, blue = stores["northwind"], stores["bluefin"]
    blue_doc = next(d for d in DOCS if d.tenant == "bluefin")
    with pytest.raises(vdb.TenantScopeError):
        north.add([blue_doc])
    assert north.get([blue_doc.id]) == []
    north.delete([blue_doc.id])  # deletes nothing of bluefin's
    assert len(blue.get([blue_doc.id])) == 1
    assert not any(callable(getattr(north, n, None)) for n in ("query_all", "raw_query"))
    with pytest.raises(ValueError):
        vdb.TenantStore(location, "", FAKE)


def test_the_missing_filter_leaks(shared):
    q = FAKE(["x"])[0]
    ids = shared.query(query_embeddings=[q.tolist()], n_results=20, include=[])["ids"][0]
    assert explore.leaks(ids, "northwind")  # without the filter both tenants come back


# --- the embedder guard ---------------------------------------------------------------


def test_embedder_guard_refuses_another_model(location):
    vdb.TenantStore(location, "northwind", FAKE, design="collection")
    with pytest.raises(vdb.EmbedderMismatchError, match="test-hash-32"):
        vdb.TenantStore(location, "northwind", OTHER, design="collection")
    store = vdb.TenantStore(location, "northwind", FAKE, design="collection")
    with pytest.raises(vdb.EmbedderMismatchError):
        store.query_vector(OTHER(["q"])[0], 3, embedder=OTHER)


def test_chroma_itself_rejects_a_wrong_dimension(location):
    collection = vdb.open_collection(location.client(), "test-dims", FAKE)
    collection.upsert(ids=["a"], embeddings=[[0.1] * 32])
    with pytest.raises(Exception, match="dimension"):
        collection.upsert(ids=["b"], embeddings=[[0.1] * 16])


# --- Chroma's defaults and HNSW recall ------------------------------------------------


def test_chroma_defaults_are_what_the_notebook_teaches(location):
    client = location.client()
    bare = client.get_or_create_collection("test-defaults", embedding_function=None)
    hnsw = bare.configuration["hnsw"]
    assert {k: hnsw[k] for k in vdb.CHROMA_DEFAULTS} == vdb.CHROMA_DEFAULTS
    ours = vdb.open_collection(client, "test-cosine", FAKE)
    assert ours.configuration["hnsw"]["space"] == "cosine"
    again = vdb.open_collection(client, "test-cosine", FAKE, space="l2")  # fixed at creation
    assert again.configuration["hnsw"]["space"] == "cosine"
    with pytest.raises(Exception, match="space"):  # modify refuses the space ...
        again.modify(configuration={"hnsw": {"space": "l2"}})
    with pytest.raises(Exception, match="ef_construction"):  # ... and ef_construction
        again.modify(configuration={"hnsw": {"ef_construction": 8}})


def test_hnsw_recall_against_exact_search(location):
    vectors = explore.clustered_vectors(3000, dimension=64, seed=5)
    queries = explore.clustered_vectors(40, dimension=64, seed=6)
    points = explore.sweep_ef_search(location.client(), vectors, queries, k=10, ef_values=(200,),
                                 prefix="test-hnsw")
    assert points[0].recall >= 0.95
    front = explore.pareto_frontier([explore.exact_search_point(vectors, queries, 10), *points])
    assert front and all(0 <= p.recall <= 1 and p.qps > 0 for p in front)


def _independent_recall(collection, vectors, queries, k=10):
    """Recall@k by ids against numpy argsort (not the module's exact_top_k)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    hits = []
    for q in queries:
        true = set(np.argsort(-(unit @ (q / np.linalg.norm(q))))[:k])
        got = collection.query(query_embeddings=[q.tolist()], n_results=k, include=[])["ids"][0]
        hits.append(len(true & {int(i[1:]) for i in got}) / k)
    return float(np.mean(hits))


def test_recall_rises_with_ef_search(location):
    # A sparse graph (M=4, ef_construction 16) on 4,000 noisy 64-d vectors: with
    # ef_search 10 the search stops early and misses neighbours; 300 recovers them.
    vectors = explore.clustered_vectors(4000, dimension=64, seed=11)
    queries = explore.clustered_vectors(60, dimension=64, seed=12)
    sparse = {"max_neighbors": 4, "ef_construction": 16}
    low, high = explore.sweep_ef_search(location.client(), vectors, queries, k=10,
                                    ef_values=(10, 300), prefix="test-ef-rise", hnsw=sparse)
    assert (low.ef_search, high.ef_search) == (10, 300)
    assert high.recall >= low.recall + 0.3, (low, high)
    # the same numbers from ids and numpy, independent of recall_at_k and exact_top_k
    client = location.client()
    by_ids = [_independent_recall(client.get_collection(explore.sweep_collection_name("test-ef-rise", ef)),
                                  vectors, queries) for ef in (10, 300)]
    assert by_ids[1] >= by_ids[0] + 0.3, by_ids
    assert abs(by_ids[0] - low.recall) < 0.05 and abs(by_ids[1] - high.recall) < 0.05
    # each collection really carries its ef_search, and the others the settings asked for
    config = client.get_collection(explore.sweep_collection_name("test-ef-rise", 10)).configuration["hnsw"]
    assert (config["ef_search"], config["max_neighbors"], config["ef_construction"]) == (10, 4, 16)


def test_modify_does_not_reach_the_loaded_index_in_embedded_chroma(location):
    """Why the sweep makes one collection per ef_search (a Chroma 1.5 fact the notebook
    teaches): modify records the value, the loaded index keeps searching with the old one."""
    vectors = explore.clustered_vectors(4000, dimension=64, seed=11)
    queries = explore.clustered_vectors(60, dimension=64, seed=12)
    sparse = {"max_neighbors": 4, "ef_construction": 16}
    low, = explore.sweep_ef_search(location.client(), vectors, queries, k=10, ef_values=(10,),
                               prefix="test-modify", hnsw=sparse)
    collection = location.client().get_collection(explore.sweep_collection_name("test-modify", 10))
    collection.modify(configuration={"hnsw": {"ef_search": 300}})
    assert collection.configuration["hnsw"]["ef_search"] == 300
    truth = [vdb.exact_top_k(vectors, q, 10)[1] for q in queries]
    after = explore.measure_search(collection, queries, truth, 10)
    assert abs(after.recall - low.recall) < 0.02, (low, after)


def test_pareto_frontier_drops_dominated_points():
    pts = [explore.SweepPoint("a", 1, 0.5, 100), explore.SweepPoint("b", 2, 0.9, 50),
           explore.SweepPoint("c", 3, 0.4, 40), explore.SweepPoint("d", 4, 1.0, 10)]
    assert [p.method for p in explore.pareto_frontier(pts)] == ["a", "b", "d"]


# --- persistence and server mode ------------------------------------------------------


def test_data_survives_reopening_a_persistent_client(tmp_path):
    write = (
        "from labsupport.services import vector_database_design as services\n"
        f"c = services.ChromaLocation(path={str(tmp_path)!r}).client()\n"
        "col = c.get_or_create_collection('persisted', embedding_function=None)\n"
        "col.upsert(ids=['a', 'b'], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{'tenant': 'x'}, {'tenant': 'y'}])\n")
    read = (
        "from labsupport.services import vector_database_design as services\n"
        f"c = services.ChromaLocation(path={str(tmp_path)!r}).client()\n"
        "print(sorted(c.get_collection('persisted').get(where={'tenant': 'y'})['ids']))\n")
    subprocess.run([sys.executable, "-c", write], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", read], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert out.strip() == "['b']"


def test_tenant_store_against_a_real_chroma_server_on_loopback():
    server = services.start_chroma_server()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        docs = [d for d in DOCS if d.topic in ("vpn", "expenses")]
        for design in ("shared", "database"):
            stores = vdb.load_tenant_stores(server.location, design, docs, FAKE)
            hits = stores["bluefin"].query("VPN", k=30)
            assert hits and all(h.tenant == "bluefin" for h in hits)
            assert stores["northwind"].count() == sum(d.tenant == "northwind" for d in docs)
        import chromadb
        assert isinstance(server.location.client(), chromadb.api.ClientAPI)
    finally:
        server.stop()
    assert server.process.poll() is not None


# --- meaning, not words (the real model) ----------------------------------------------


def test_meaning_not_words_embedding_finds_the_password_documents_keywords_do_not():
    embedder = vdb.course_embedder()
    vectors = embedder([d.title + ". " + d.text for d in DOCS])
    for text in ("How do I reset my password?", "I forgot my login"):
        idx, _ = vdb.exact_top_k(vectors, embedder(text)[0], 5)
        assert [DOCS[i].topic for i in idx] == ["password_reset"] * 5, text
    by_words = explore.keyword_top_k(DOCS, "How do I reset my password?", 5)
    assert [DOCS[i].topic for i in by_words] == ["password_reset"] * 5
    # "forgot" and "login" appear in no document: word matching finds nothing at all
    assert explore.keyword_top_k(DOCS, "I forgot my login", 5) == []


# --- the exercise checker -------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(location):
    """The checker's scenario with the hash embedder: same checks, no 0.8 GB model."""
    return checks.build_scenario(FAKE, OTHER, location)


@pytest.fixture()
def progress(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "progress.json"))


def _failed(result):
    return {c.name: c for c in result.checks if not c.passed}


def test_checker_fails_the_starter_and_names_a_leaked_document(scenario, progress):
    result = checks.check_exercise(checks.starter_tenant_query, scenario=scenario)
    assert not result.passed
    failed = _failed(result)
    isolation = next(c for name, c in failed.items() if "cross-tenant" in name)
    # "<n> of <m> queries leaked <d> documents; e.g. northwind asked “…” and got bluefin-…"
    match = re.search(r"(\d+) of (\d+) queries leaked (\d+) documents; e\.g\. (\w+) asked .* "
                      r"and got (\S+)", isolation.found)
    assert match, isolation.found
    leaked_n, total = int(match[1]), int(match[2])
    assert total >= 1000 and leaked_n > 0
    asker, leaked_id = match[4], match[5]
    assert scenario.by_id[leaked_id].tenant != asker
    assert any("mismatched embedder" in name for name in failed)


def test_checker_passes_the_reference_solution(scenario, progress):
    from labsupport.solutions import vector_database_design as answer_key

    result = checks.check_exercise(answer_key.tenant_query, scenario=scenario, solution_mode=True)
    assert result.passed, [(c.name, c.found) for c in result.checks]
    assert len(result.checks) == 4


def test_checker_catches_post_filtering_and_a_missing_where(scenario, progress):
    from labsupport.solutions import vector_database_design as answer_key

    def post_filter(collection, tenant, query_embedding, embedder, k=5, where=None):
        ids = answer_key.tenant_query(collection, tenant, query_embedding, embedder, k=k)
        return ids  # tenant-scoped but ignores the caller's date filter

    def top_k_then_drop(collection, tenant, query_embedding, embedder, k=5, where=None):
        vdb.check_embedder(collection, embedder)
        ids = collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                               where=where, include=[])["ids"][0]
        return [i for i in ids if i.startswith(tenant + "-")]  # no leak, but too few

    ignoring_where = _failed(checks.check_exercise(post_filter, scenario=scenario))
    assert any("date-range" in name for name in ignoring_where)
    dropping = _failed(checks.check_exercise(top_k_then_drop, scenario=scenario))
    assert not any("cross-tenant" in name for name in dropping)
    assert any("recall" in name for name in dropping)


@pytest.mark.parametrize("answer", [None, 42, "tenant_query"])
def test_checker_turns_a_non_function_into_feedback(scenario, progress, answer):
    result = checks.check_exercise(answer, scenario=scenario)
    assert not result.passed and len(result.checks) == 1
    assert "function" in result.checks[0].name


def test_checker_turns_exceptions_and_wrong_returns_into_feedback(scenario, progress):
    def crashes(collection, tenant, query_embedding, embedder, k=5, where=None):
        raise KeyError("tenant")

    def returns_none(collection, tenant, query_embedding, embedder, k=5, where=None):
        return None

    for answer, expected in ((crashes, "KeyError"), (returns_none, "list of ids")):
        result = checks.check_exercise(answer, scenario=scenario)  # must not raise
        assert not result.passed
        assert any(expected in c.found for c in result.checks), [c.found for c in result.checks]
    with pytest.raises(AssertionError):  # solution mode makes a failure loud
        checks.check_exercise(crashes, scenario=scenario, solution_mode=True)


def test_checker_judges_each_row_on_its_own(scenario, progress):
    from labsupport.solutions import vector_database_design as answer_key

    def breaks_on_filters(collection, tenant, query_embedding, embedder, k=5, where=None):
        if where is not None:
            raise KeyError("where")
        return answer_key.tenant_query(collection, tenant, query_embedding, embedder, k=k)

    result = checks.check_exercise(breaks_on_filters, scenario=scenario)
    assert not result.passed and len(result.checks) == 4
    rows = {c.name: c for c in result.checks}
    isolation = next(c for name, c in rows.items() if "cross-tenant" in name)
    assert not isolation.passed and "KeyError" in isolation.found
    assert "Reproduce: checks.check_isolation(my_answer, seed=2024)" in isolation.hint
    assert not next(c for name, c in rows.items() if "date-range" in name).passed
    assert next(c for name, c in rows.items() if "recall" in name).passed  # where=None only
    assert rows[checks.GUARD_ROW].passed


def test_chroma_server_cli_help():
    out = subprocess.run([sys.executable, "-m", "labsupport.services.vector_database_design",
                          "--help"], check=True, timeout=60, capture_output=True, text=True)
    assert "--port" in out.stdout and "--path" in out.stdout
