"""Tests of labsupport.vector_database_design (and its checks, explore, services layers)
and its data set, data/tenants/.

References are independent of the code under test: numpy argsort for exact search, a
plain Python predicate for filters, Chroma's own answers for the store. Most tests use
a small hash embedder so they run without the 0.8 GB model.
"""

import ast
import calendar
import hashlib
import json
import random
import re
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from labsupport import vector_database_design as vdb
from labsupport.checks import vector_database_design as checks
from labsupport.checks import vector_database_design_steps as step_checks
from labsupport.explore import vector_database_design as explore
from labsupport.services import vector_database_design as services
from labsupport.solutions import vector_database_design as answer_key

DOCS = vdb.load_documents()
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_vector_database_design.ipynb"


def _hash_encode(texts: list[str]) -> np.ndarray:
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(32)
        rows.append(v / np.linalg.norm(v))
    return np.array(rows, dtype=np.float32)


def _salted_encode(texts: list[str]) -> np.ndarray:
    return _hash_encode(["salt:" + t for t in texts])


FAKE = vdb.Embedder("test-hash-32", 32, _hash_encode)
OTHER = vdb.Embedder("test-hash-32-other", 32, _hash_encode)  # another name, same vectors
IMPOSTOR = vdb.Embedder(FAKE.name, FAKE.dimension, _salted_encode)  # FAKE's name, other vectors


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


def _utc_seconds(day: str) -> int:
    return calendar.timegm(date.fromisoformat(day).timetuple())  # not datetime's tz handling


DATE_CASES = [("2024-03-01", "2024-04-01", ["Finance", "HR"]),
              ("2023-12-31", "2024-01-01", None),  # one day, across the year's end
              ("2024-02-28", "2024-03-01", ["IT"]),  # a leap day
              ("2024-01-01", "2024-07-01", ["IT", "Security", "Engineering"])]


def _boundary_records(start: str, end: str, rng: random.Random) -> list[dict]:
    lo, hi = _utc_seconds(start), _utc_seconds(end)
    stamps = [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1, lo - 5 * 3600, hi - 5 * 3600,
              lo + 5 * 3600, hi + 5 * 3600]  # New York's offset either side
    stamps += [rng.randint(lo - 30 * 86400, hi + 30 * 86400) for _ in range(60)]
    departments = ["IT", "Finance", "HR", "Operations", "Security", "Engineering"]
    return [{"timestamp": t, "department": departments[i % 6]} for i, t in enumerate(stamps)]


@pytest.mark.parametrize(("start", "end", "departments"), DATE_CASES)
def test_dates_and_departments_keeps_what_a_brute_force_filter_keeps(location, start, end,
                                                                     departments):
    from chromadb.api.types import validate_where

    where = vdb.dates_and_departments(start, end, departments)
    validate_where(where)  # Chroma accepts it: one top-level key
    assert len(where) == 1
    lo, hi = _utc_seconds(start), _utc_seconds(end)
    records = _boundary_records(start, end, random.Random(start))

    def keep(r):
        return lo <= r["timestamp"] < hi and (departments is None or r["department"] in departments)

    assert [vdb.matches(r, where) for r in records] == [keep(r) for r in records]
    assert vdb.matches({"timestamp": lo, "department": (departments or ["HR"])[0]}, where)
    assert not vdb.matches({"timestamp": hi, "department": (departments or ["HR"])[0]}, where)
    # the documents' own ISO dates (UTC) compared as strings
    by_date = [start <= d.date < end and (departments is None or d.department in departments)
               for d in DOCS]
    assert list(vdb.filter_mask(DOCS, where)) == by_date
    # and Chroma keeps the same records
    collection = location.client().get_or_create_collection(
        f"test-dates-{start}-{end}", embedding_function=None)
    collection.upsert(ids=[f"r{i}" for i in range(len(records))],
                      embeddings=[[1.0, 0.0]] * len(records), metadatas=records)
    got = set(collection.get(where=where, include=[])["ids"])
    assert got == {f"r{i}" for i, r in enumerate(records) if keep(r)}


def test_dates_and_departments_is_the_same_in_new_york():
    utc = [vdb.dates_and_departments(*case) for case in DATE_CASES]
    with step_checks._time_zone("America/New_York"):  # the zone step 3's check runs in
        start = DATE_CASES[0][0]
        # the switch took: local midnight is not UTC midnight here
        assert int(datetime.fromisoformat(start).timestamp()) == _utc_seconds(start) + 5 * 3600
        in_new_york = [vdb.dates_and_departments(*case) for case in DATE_CASES]
    assert in_new_york == utc


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
    stores = explore.load_tenant_stores(location, design, DOCS, FAKE)
    rng = random.Random(design)  # a str seed: the same queries in every process
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
    stores = explore.load_tenant_stores(location, "shared", DOCS, FAKE)
    north, blue = stores["northwind"], stores["bluefin"]
    blue_doc = next(d for d in DOCS if d.tenant == "bluefin")
    with pytest.raises(vdb.TenantScopeError):
        north.add([blue_doc])
    assert north.get([blue_doc.id]) == []
    north.delete([blue_doc.id])  # deletes nothing of bluefin's
    assert len(blue.get([blue_doc.id])) == 1
    assert not any(callable(getattr(north, n, None)) for n in ("query_all", "raw_query"))
    with pytest.raises(vdb.TenantNameError):
        vdb.TenantStore(location, "", FAKE)


@pytest.mark.parametrize("bad", ["northwind\n", "Northwind", " northwind", "no", "a" * 43,
                                 {"$ne": "northwind"}, None, "", "north wind", "-northwind",
                                 "northwind_", "bluefin/x"])
def test_check_tenant_refuses_and_names_a_bad_tenant(bad):
    with pytest.raises(vdb.TenantNameError) as caught:
        vdb.check_tenant(bad)
    assert isinstance(caught.value, ValueError)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize("good", ["northwind", "client-7", "a_b", "abc", "a" * 42, "7x7"])
def test_check_tenant_accepts_and_returns_a_good_tenant(good):
    assert vdb.check_tenant(good) == good


def _is_tenant_id(value) -> bool:
    """The rule, written without a regular expression."""
    inner = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
    edge = inner - {"_", "-"}
    return (type(value) is str and 3 <= len(value) <= 42 and set(value) <= inner
            and value[0] in edge and value[-1] in edge)


def test_check_tenant_agrees_with_a_plain_predicate_on_random_strings():
    rng = random.Random(7)
    alphabet = "ab9_-A .\n/é"
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 2, 3, 4, 8, 41,
                                                                          42, 43, 44])))
        try:
            accepted = vdb.check_tenant(value) == value
        except vdb.TenantNameError:
            accepted = False
        assert accepted == _is_tenant_id(value), repr(value)


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


def _recorded_probe(collection) -> list[float]:
    return [float(x) for x in collection.metadata["embedding_probe"].split(",")]


def test_the_probe_guard_refuses_an_impostor_of_the_same_name(location):
    # the reference: the impostor's vector for the probe sentence, computed here, is far off
    real = _hash_encode([vdb.PROBE_TEXT])[0][:vdb.PROBE_COMPONENTS]
    fake = _salted_encode([vdb.PROBE_TEXT])[0][:vdb.PROBE_COMPONENTS]
    assert np.abs(real - fake).max() > 100 * vdb.PROBE_TOLERANCE
    assert (IMPOSTOR.name, IMPOSTOR.dimension) == (FAKE.name, FAKE.dimension)
    client = location.client()
    collection = vdb.open_collection(client, "test-probe", FAKE)
    # what the collection records is FAKE's probe vector, as text
    np.testing.assert_allclose(_recorded_probe(collection), real, atol=1e-6)
    vdb.check_embedder(collection, FAKE)  # the real embedder passes
    with pytest.raises(vdb.EmbedderMismatchError, match="test-probe"):
        vdb.check_embedder(collection, IMPOSTOR)
    with pytest.raises(vdb.EmbedderMismatchError):  # opening the existing collection
        vdb.open_collection(client, "test-probe", IMPOSTOR)
    store = vdb.TenantStore(location, "northwind", FAKE, design="collection", name="probe")
    store.add([d for d in DOCS if d.tenant == "northwind"][:20])
    with pytest.raises(vdb.EmbedderMismatchError):  # a store opening the same collection
        vdb.TenantStore(location, "northwind", IMPOSTOR, design="collection", name="probe")
    assert len(store.query_vector(FAKE(["VPN"])[0], 3, embedder=FAKE)) == 3
    with pytest.raises(vdb.EmbedderMismatchError):
        store.query_vector(IMPOSTOR(["VPN"])[0], 3, embedder=IMPOSTOR)


def test_a_probe_within_the_tolerance_passes(location):
    def noisy_encode(texts):
        noise = np.random.default_rng(len(texts)).uniform(-1e-5, 1e-5, (len(texts), 32))
        return _hash_encode(texts) + noise.astype(np.float32)

    noisy = vdb.Embedder(FAKE.name, FAKE.dimension, noisy_encode)
    difference = np.abs(np.array(noisy.probe) - np.array(FAKE.probe)).max()
    assert 0 < difference < vdb.PROBE_TOLERANCE
    collection = vdb.open_collection(location.client(), "test-probe-noise", FAKE)
    vdb.check_embedder(collection, noisy)
    assert vdb.open_collection(location.client(), "test-probe-noise", noisy).name == collection.name
    store = vdb.TenantStore(location, "bluefin", FAKE, design="collection", name="probe-noise")
    store.add([d for d in DOCS if d.tenant == "bluefin"][:10])
    assert len(store.query_vector(noisy(["VPN"])[0], 2, embedder=noisy)) == 2


def test_the_cache_never_serves_one_embedders_vectors_to_an_impostor():
    text = "A sentence the real embedder embeds first."
    first = FAKE([text])
    np.testing.assert_array_equal(first, _hash_encode([text]))
    served = IMPOSTOR([text])  # the same name and text, after the real one
    assert not np.allclose(served, first)
    np.testing.assert_array_equal(served, _salted_encode([text]))
    np.testing.assert_array_equal(FAKE([text]), first)  # and the other way round


def test_the_cache_never_serves_vectors_to_an_embedder_the_guard_refuses(location):
    def rounded_encode(texts):  # like a coarsely quantised build of the same model
        return np.round(_hash_encode(texts), 2)

    near = vdb.Embedder(FAKE.name, FAKE.dimension, rounded_encode)
    collection = vdb.open_collection(location.client(), "test-probe-near", FAKE)
    with pytest.raises(vdb.EmbedderMismatchError):  # the guard tells the two apart ...
        vdb.check_embedder(collection, near)
    text = "Another sentence the real embedder embeds first."
    first = FAKE([text])
    served = near([text])
    assert not np.array_equal(served, first), "served the real embedder's cached vector"
    np.testing.assert_array_equal(served, rounded_encode([text]))  # ... the cache must too


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
            stores = explore.load_tenant_stores(server.location, design, docs, FAKE)
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


# --- shipped vectors: the seed and the docstrings ---------------------------------------


def test_load_seed_loads_only_for_an_embedder_with_the_same_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(vdb, "_ENCODE_CACHE", {})  # this test's cache, restored after it
    texts = [f"seed sentence {i}" for i in range(7)]
    shipped = explore.random_unit_vectors(7, 32, seed=9)  # not what FAKE computes

    def write(name: str, probe) -> Path:
        path = tmp_path / name
        np.savez_compressed(path, texts=np.array(texts), vectors=shipped, probe=np.array(probe))
        return path

    assert explore.load_seed(FAKE, tmp_path / "missing.npz") == 0
    off = write("off.npz", np.array(FAKE.probe) + 10 * vdb.PROBE_TOLERANCE)
    assert explore.load_seed(FAKE, off) == 0
    ours = write("ours.npz", FAKE.probe)
    assert explore.load_seed(IMPOSTOR, ours) == 0  # the same name, another probe
    np.testing.assert_array_equal(IMPOSTOR(texts), _salted_encode(texts))
    np.testing.assert_array_equal(FAKE(texts), _hash_encode(texts))  # nothing loaded yet
    monkeypatch.setattr(vdb, "_ENCODE_CACHE", {})
    assert explore.load_seed(FAKE, ours) == 7
    np.testing.assert_array_equal(FAKE(texts), shipped)  # served from the file
    np.testing.assert_array_equal(IMPOSTOR(texts), _salted_encode(texts))
    monkeypatch.setattr(vdb, "_ENCODE_CACHE", {})
    close = write("close.npz", np.array(FAKE.probe) + 1e-5)  # float noise between machines
    assert explore.load_seed(FAKE, close) == 7


def test_the_shipped_seed_holds_the_documents_and_the_topic_questions():
    questions = [q for qs in explore.TOPIC_QUESTIONS.values() for q in qs]
    with np.load(explore.SEED_PATH) as data:
        texts, vectors, probe = list(map(str, data["texts"])), data["vectors"], data["probe"]
    assert len(texts) == len(DOCS) + len(questions) == 361
    assert texts == [d.title + ". " + d.text for d in DOCS] + questions
    assert vectors.shape == (361, 384) and probe.shape == (vdb.PROBE_COMPONENTS,)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_random_unit_vectors_are_unit_length_and_seeded():
    a = explore.random_unit_vectors(500, 64, seed=3)
    assert a.shape == (500, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(a, explore.random_unit_vectors(500, 64, seed=3))
    assert not np.allclose(a, explore.random_unit_vectors(500, 64, seed=4))
    # no structure: pairs are about orthogonal (cosine ~ N(0, 1/64)), no favoured direction
    cosines = (a @ a.T)[np.triu_indices(500, 1)]
    assert abs(cosines.mean()) < 0.01 and abs(cosines.std() - 64 ** -0.5) < 0.01
    assert np.linalg.norm(a.mean(axis=0)) < 0.1


@pytest.mark.serial  # loads the 0.8 GB course model (~6 s) if no other test did
def test_the_shipped_vectors_are_the_course_models(location, monkeypatch):
    texts, vectors = explore.docstring_vectors()
    assert len(texts) == 5000 and len(set(texts)) == 5000
    assert vectors.shape == (5000, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    with np.load(explore.DOCSTRINGS / "minilm.npz") as data:
        raw = data["vectors"]
    assert raw.dtype == np.float16
    assert np.abs(np.linalg.norm(raw.astype(np.float64), axis=1) - 1).max() < 1e-3
    course = vdb.course_embedder()
    picks = [0, 1234, 2500, 3777, 4999]
    fresh = course.encode([texts[i] for i in picks])  # the model itself, not the cache
    cosines = np.sum(fresh * vectors[picks], axis=1) / np.linalg.norm(fresh, axis=1)
    assert cosines.min() > 0.999, cosines
    # the seed: made by this model, so load_seed takes all 361 vectors
    with np.load(explore.SEED_PATH) as data:
        seed_texts, seed_vectors, seed_probe = data["texts"], data["vectors"], data["probe"]
    assert np.abs(seed_probe - np.array(course.probe)).max() < vdb.PROBE_TOLERANCE
    again = course.encode([str(seed_texts[i]) for i in (0, 200, 360)])
    assert np.sum(again * seed_vectors[[0, 200, 360]], axis=1).min() > 0.999
    monkeypatch.setattr(vdb, "_ENCODE_CACHE", {})  # keep the other tests' vectors their own
    assert explore.load_seed(course) == 361
    # the real impostor (CLS pooling under the course model's name) is refused
    impostor = explore.impostor_embedder()
    assert (impostor.name, impostor.dimension) == (course.name, course.dimension)
    collection = vdb.open_collection(location.client(), "test-course-probe", course)
    with pytest.raises(vdb.EmbedderMismatchError):
        vdb.check_embedder(collection, impostor)


# --- the exercise checker -------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(location):
    """The checker's scenario with the hash embedder: same checks, no 0.8 GB model."""
    return checks.build_scenario(FAKE, OTHER, IMPOSTOR, location)


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
    assert total == checks.N_TEXT + checks.N_VECTOR and 0 < leaked_n <= total
    asker, leaked_id = match[4], match[5]
    assert scenario.by_id[leaked_id].tenant != asker
    assert any("mismatched embedder" in name for name in failed)


def test_checker_passes_the_reference_solution(scenario, progress):
    result = checks.check_exercise(answer_key.tenant_query, scenario=scenario, solution_mode=True)
    assert result.passed, [(c.name, c.found) for c in result.checks]
    assert len(result.checks) == 4


def test_checker_catches_post_filtering_and_a_missing_where(scenario, progress):
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


def test_checker_guard_row_needs_the_error_for_both_wrong_embedders(scenario, progress):
    def name_only_guard(collection, tenant, query_embedding, embedder, k=5, where=None):
        meta = collection.metadata
        if (meta["embedding_model"], meta["embedding_dimension"]) != (embedder.name,
                                                                      embedder.dimension):
            raise vdb.EmbedderMismatchError("another model")
        return answer_key.tenant_query(collection, tenant, query_embedding, FAKE, k, where)

    def plain_value_error(collection, tenant, query_embedding, embedder, k=5, where=None):
        try:
            vdb.check_embedder(collection, embedder)
        except vdb.EmbedderMismatchError as exc:
            raise ValueError(str(exc)) from None
        return answer_key.tenant_query(collection, tenant, query_embedding, embedder, k, where)

    row = checks.check_embedder_guard(name_only_guard, scenario=scenario)
    assert not row.passed and "the collection's name, other vectors" in row.found
    assert repr(OTHER.name) not in row.found  # the other-named embedder was refused
    row = checks.check_embedder_guard(plain_value_error, scenario=scenario)
    assert not row.passed and "ValueError" in row.found
    assert checks.check_embedder_guard(answer_key.tenant_query, scenario=scenario).passed


def test_checker_isolation_allows_refusing_a_filter_that_names_a_tenant(scenario, progress):
    seen = []

    def refuses_tenant_filters(collection, tenant, query_embedding, embedder, k=5, where=None):
        seen.append(where)
        if where is not None and "tenant" in json.dumps(where):
            raise ValueError("a filter may not name a tenant")
        if where is not None and len(where) != 1:
            raise ValueError("malformed filter")
        return answer_key.tenant_query(collection, tenant, query_embedding, embedder, k, where)

    def merges_the_filter(collection, tenant, query_embedding, embedder, k=5, where=None):
        full = {"tenant": tenant, **(where or {})}  # the caller's key wins: a leak
        if len(full) > 1:
            full = {"$and": [{k_: v} for k_, v in full.items()]}
        return collection.query(query_embeddings=[list(query_embedding)], n_results=k,
                                where=full, include=[])["ids"][0]

    row = checks.check_isolation(refuses_tenant_filters, scenario=scenario)
    assert row.passed, row.found
    escaping = [w for w in seen if w is not None and "tenant" in json.dumps(w)]
    assert escaping and any(len(w) == 2 for w in escaping)  # escapes and malformed ones
    assert "filters naming a tenant refused" in row.found
    assert not checks.check_isolation(merges_the_filter, scenario=scenario).passed


# --- the steps and the quiz -------------------------------------------------------------


def _starter(n: int):
    """The function or class of step ``n``'s starter cell in the notebook, defined in a
    namespace with np and vdb (the cell's demo lines need the notebook's variables)."""
    label = f"07_vector_database_design/step-{n}"
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"]
             if c.get("metadata", {}).get("labsupport", {}).get("starter") == label]
    assert len(cells) == 1, label
    tree = ast.parse("".join(cells[0]["source"]))
    tree.body = [node for node in tree.body
                 if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef)]
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    assert len(names) == 1, names
    namespace = {"np": np, "vdb": vdb}
    exec(compile(tree, label, "exec"), namespace)  # noqa: S102 - the course's own notebook
    return namespace[names[0]]


STEP_KEYS = {1: answer_key.exact_top_k, 2: answer_key.recall_at_k,
             3: answer_key.dates_and_departments, 4: answer_key.TenantStore}
# the row each starter fails for the reason its cell gives ("not yet: ...")
STARTER_FAILS = {1: "random matrix 1", 2: "a tie with the k-th true distance counts",
                 3: "Chroma accepts it", 4: "bad tenant ids refused"}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_step_checker_passes_the_answer_key(progress, n):
    result = checks.check_step(n, STEP_KEYS[n], solution_mode=True)
    assert result.passed and len(result.checks) > 1, [(c.name, c.found) for c in result.checks]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_step_checker_passes_the_library_function(progress, n):
    library = {1: vdb.exact_top_k, 2: vdb.recall_at_k, 3: vdb.dates_and_departments}[n]
    assert checks.check_step(n, library).passed


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_step_checker_fails_the_notebooks_starter(progress, n):
    result = checks.check_step(n, _starter(n))
    assert not result.passed
    failed = [c.name for c in result.checks if not c.passed]
    assert any(name.startswith(STARTER_FAILS[n]) for name in failed), failed


def test_quiz_answer_key_passes_and_the_recall_question_is_right(progress):
    assert checks.check_quiz(answer_key.QUIZ_ANSWERS, solution_mode=True).passed
    found, true = [0.10, 0.12, 0.15, 0.2505, 0.31], [0.10, 0.12, 0.15, 0.20, 0.25]
    within = sum(d <= true[-1] + 1e-3 for d in found) / 5  # by hand, not recall_at_k
    assert within == answer_key.QUIZ_ANSWERS["recall-tie"] == vdb.recall_at_k(found, true, 5)


def test_chroma_server_cli_help():
    out = subprocess.run([sys.executable, "-m", "labsupport.services.vector_database_design",
                          "--help"], check=True, timeout=60, capture_output=True, text=True)
    assert "--port" in out.stdout and "--path" in out.stdout
