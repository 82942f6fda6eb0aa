"""Tests of labsupport.rag_pipeline (notebook 05), its checks, explore and bench layers,
and its data set, data/hr_policies."""

import json
import re

import numpy as np
import pytest

from labsupport import rag_pipeline as rag
from labsupport.bench import rag_pipeline as bench
from labsupport.checks import rag_pipeline as checks
from labsupport.explore import rag_pipeline as explore

DOCS = rag.load_handbook()
BY_NAME = {d.name: d for d in DOCS}
STOP = set("a an the is are do does i my me we our can what when how who which for of to in on "
           "at by if be it get much many long there any from with and or am have has will would "
           "should must may after before into than that this they their them your you".split())


# --- data tests ---------------------------------------------------------------------


def test_handbook_size_and_topics():
    assert len(DOCS) >= 15
    words = sum(len(d.text.split()) for d in DOCS)
    assert words >= 25_000, words
    text = " ".join(d.text.lower() for d in DOCS)
    for topic in ("annual leave", "benefits", "remote", "expenses", "travel", "conduct",
                  "security", "onboarding", "performance", "offboarding"):
        assert topic in text, topic
    assert all(d.text.startswith("# ") for d in DOCS)
    assert sum(d.text.count("\n|---") for d in DOCS) >= 10  # tables
    assert sum(len(re.findall(r"policy, section \d", d.text)) for d in DOCS) >= 20  # x-refs


QUESTIONS = explore.load_questions()


def test_every_gold_span_exists_and_contains_its_answer():
    raw = [json.loads(line) for line in
           (rag.DATA_DIR / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(QUESTIONS) == len(raw) >= 80
    assert {q.split for q in QUESTIONS} == {"tuning", "heldout"}
    assert len({q.id for q in QUESTIONS}) == len(QUESTIONS)
    for row in raw:
        assert row["spans"], row["id"]
        for s in row["spans"]:
            assert BY_NAME[s["doc"]].text[s["start"]:s["end"]] == s["text"], row["id"]
        joined = " ".join(s["text"] for s in row["spans"]).lower()
        assert row["answer"].lower() in joined, row["id"]
    assert sum(len(q.spans) > 1 for q in QUESTIONS) >= 4  # a rule and its exception, …
    # answers that run over more than one paragraph of their document
    assert sum(len(_gold_paragraphs(q)) > 1 for q in QUESTIONS) >= 4


def _paragraph_index():
    """Every paragraph of the handbook, its vector, and where each document's rows are."""
    rows, where = [], {}
    for d in DOCS:
        spans = bench.paragraphs(d.text)
        where[d.name] = (len(rows), [(d.name, a, b) for a, b in spans])
        rows += [d.text[a:b] for a, b in spans]
    return rows, where


def _gold_paragraphs(q, spans=None):
    """(doc, paragraph number) of every paragraph that overlaps one of the gold spans."""
    out = set()
    for s in spans or q.spans:
        for j, (a, b) in enumerate(bench.paragraphs(BY_NAME[s.doc].text)):
            if a < s.end and s.start < b:
                out.add((s.doc, j))
    return out


def _rank_in_document(q_vec, para_vecs, where, gold):
    """Best rank (1 = most similar) of a gold paragraph among its document's paragraphs."""
    best = 10**9
    for doc, j in gold:
        first, spans = where[doc]
        scores = para_vecs[first: first + len(spans)] @ q_vec
        best = min(best, 1 + int((scores > scores[j]).sum()))
    return best


def _stems(text):
    return {w[:5] for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in STOP}


def test_gold_spans_read_as_answers_to_their_questions():
    """A span answers its question when (1) the paragraph holding it is among the ones of its
    document closest in meaning to the question (all-MiniLM-L6-v2, from the seed), and (2)
    the question shares a content word with it or its headings, unless (1) ranks it first.
    A control with each question given its neighbour's spans must fail (1) mostly."""
    texts, where = _paragraph_index()
    cache = rag.default_cache()
    para_vecs = cache.embed(texts)
    q_vecs = cache.embed([q.question for q in QUESTIONS])
    ranks = {}
    for q, v in zip(QUESTIONS, q_vecs, strict=True):
        ranks[q.id] = rank = _rank_in_document(v, para_vecs, where, _gold_paragraphs(q))
        assert rank <= 10, (q.id, q.question, rank)
        context = " ".join(BY_NAME[s.doc].text[s.start:s.end] + " " + " ".join(
            rag.headings_at(rag.heading_index(BY_NAME[s.doc].text), s.start)) for s in q.spans)
        assert rank == 1 or _stems(q.question) & _stems(context), (q.id, q.question)
    assert sum(r <= 3 for r in ranks.values()) >= 0.9 * len(QUESTIONS), sorted(ranks.items())
    # control: the same criterion on wrong spans (the next question's, another document)
    wrong = []
    for i, (q, v) in enumerate(zip(QUESTIONS, q_vecs, strict=True)):
        other = next(o for o in QUESTIONS[i + 1:] + QUESTIONS[:i]
                     if {s.doc for s in o.spans}.isdisjoint({s.doc for s in q.spans}))
        wrong.append(_rank_in_document(v, para_vecs, where, _gold_paragraphs(q, other.spans)))
    assert sum(r <= 3 for r in wrong) <= 0.4 * len(QUESTIONS), sorted(wrong)


# --- the embedding seed -------------------------------------------------------------


def test_seed_covers_what_the_notebook_checker_and_data_test_embed():
    seed = rag.load_seed()
    cache = rag.EmbeddingCache()
    missing = [t for t in bench.seed_texts() if cache.key(t)[:rag.SEED_KEY_HEX] not in seed]
    assert not missing, (f"{len(missing)} texts are not in the seed: run "
                         "`python -m labsupport.bench.rag_pipeline seed`; "
                         f"first: {missing[0][:80]!r}")
    assert rag.SEED_PATH.stat().st_size < 5e6  # a few MB: the repository stays small
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in list(seed.values())[:50])


def test_seed_agrees_with_the_live_model():
    from labsupport import embeddings

    seed = rag.load_seed()
    texts = bench.seed_texts()
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), 24, replace=False)]
    live = embeddings.embed(sample)
    stored = np.stack([seed[rag.EmbeddingCache().key(t)[:rag.SEED_KEY_HEX]] for t in sample])
    cosines = np.sum(live * stored, axis=1)
    assert cosines.min() >= 0.999, cosines.min()


def test_default_cache_uses_the_seed_only_for_the_course_model(monkeypatch, tmp_path):
    monkeypatch.setenv("LABSUPPORT_CACHE", str(tmp_path))
    assert len(rag.default_cache().seed) > 1000
    monkeypatch.setenv("LABSUPPORT_EMBEDDING_MODEL", str(tmp_path / "other-model"))
    other = rag.default_cache()
    assert other.seed == {} and other.model.endswith("other-model")


def test_seeded_cache_embeds_nothing_and_saves_only_new_vectors(tmp_path):
    calls = []

    def fn(batch):
        calls.append(list(batch))
        return np.tile(_fake_embed(batch), 48)  # 384 wide, like the seed's vectors

    cache = rag.EmbeddingCache(embed_fn=fn, path=tmp_path / "c.npz", seed=rag.load_seed())
    known = QUESTIONS[0].question
    cache.embed([known, "a text nobody seeded"])
    assert calls == [["a text nobody seeded"]] and cache.hits == 1 and cache.misses == 1
    assert len(rag.EmbeddingCache.load(tmp_path / "c.npz").vectors) == 1  # the seed stays out


# --- chunkers -----------------------------------------------------------------------

SAMPLE = BY_NAME["02_annual_leave.md"]


def _covers_all(text, spans):
    """No non-whitespace character is lost."""
    covered = np.zeros(len(text), bool)
    for a, b in spans:
        covered[a:b] = True
    return all(covered[i] or text[i].isspace() for i in range(len(text)))


@pytest.mark.parametrize("size,overlap", [(500, 0), (500, 100), (333, 50)])
def test_fixed_chars_exact_spans_no_loss_and_overlap(size, overlap):
    spans = rag.fixed_chars(SAMPLE.text, size, overlap)
    assert _covers_all(SAMPLE.text, spans)
    assert all(b - a <= size for a, b in spans)
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert b - c == overlap  # consecutive windows share exactly `overlap` characters


def test_fixed_tokens_respects_size_and_overlap():
    spans = rag.fixed_tokens(SAMPLE.text, 100, 20)
    assert _covers_all(SAMPLE.text, spans)
    counts = rag.count_pieces([SAMPLE.text[a:b] for a, b in spans])
    assert max(counts) <= 100 and sorted(counts)[len(counts) // 2] >= 95
    offsets = rag.word_piece_offsets(SAMPLE.text)
    starts = [o[0] for o in offsets]
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        shared = [s for s in starts if c <= s < b]
        assert len(shared) == 20


@pytest.mark.parametrize("size,overlap", [(800, 0), (400, 100), (120, 30)])
def test_recursive_sizes_overlap_and_no_loss(size, overlap):
    spans = rag.recursive(SAMPLE.text, size, overlap)
    assert _covers_all(SAMPLE.text, spans)
    assert all(b - a <= size for a, b in spans)
    if overlap == 0:
        assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))
    else:
        shared = [max(0, b - c) for (_, b), (c, _) in zip(spans, spans[1:], strict=False)]
        assert max(shared) <= overlap and sum(s > 0 for s in shared) > len(shared) // 2


def test_recursive_prefers_paragraph_breaks():
    text = "aaa aaa\n\nbbb bbb\n\nccc ccc"
    assert [text[a:b] for a, b in rag.recursive(text, 10, 0)] == ["aaa aaa", "bbb bbb", "ccc ccc"]


@pytest.mark.parametrize("overlap_units", [0, 1])
def test_structure_aware_headings_sentences_limit(overlap_units):
    spans = rag.structure_aware(SAMPLE.text, 120, overlap_units)
    assert _covers_all(SAMPLE.text, spans)
    assert max(rag.count_pieces([SAMPLE.text[a:b] for a, b in spans])) <= 120
    for a, b in spans:  # no chunk crosses a heading
        assert not re.search(r"\n#{1,3} ", SAMPLE.text[a + 1:b])
    if overlap_units:
        assert any(b > c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))


def test_chunks_map_back_to_source_with_heading_path():
    chunks = rag.chunk_handbook([SAMPLE], lambda t: rag.recursive(t, 300, 0))
    for c in chunks:
        assert SAMPLE.text[c.start:c.end] == c.text
        assert c.headings[0] == "Annual Leave"
    carry = next(c for c in chunks if "carry up to five days" in c.text)
    assert carry.headings[1] == "4. Carrying leave over"


def test_locate_maps_strings_and_rejects_rewritten_text():
    pieces = ["# Annual Leave", "Rest matters."]
    assert explore.locate(SAMPLE, pieces) == [(0, 14), (16, 29)]
    with pytest.raises(ValueError):
        explore.locate(SAMPLE, ["Rest matters a lot."])


# --- metrics against hand-worked examples -------------------------------------------


def test_span_scores_hand_worked():
    gold = [rag.Span("d", 10, 20)]
    # one chunk [0, 15): 5 gold chars covered; recall 5/10, precision 5/15, IoU 5/(10+15-5)
    s = rag.span_scores(gold, [rag.Chunk("d", 0, 15, "x" * 15)])
    assert s == pytest.approx({"recall": 0.5, "precision": 1 / 3, "iou": 0.25})
    # two overlapping chunks [0, 15) and [12, 30): covered 10, retrieved counted 15 + 18 = 33
    s = rag.span_scores(gold, [rag.Chunk("d", 0, 15, ""), rag.Chunk("d", 12, 30, "")])
    assert s == pytest.approx({"recall": 1.0, "precision": 10 / 33, "iou": 10 / 33})
    # a chunk of another document covers nothing
    s = rag.span_scores(gold, [rag.Chunk("e", 10, 20, "")])
    assert s["recall"] == 0 and s["iou"] == 0


# --- embedding cache and retrieval --------------------------------------------------


def _fake_embed(texts):
    rng = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts]
    v = np.array(rng, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_embedding_cache_embeds_each_text_once_and_persists(tmp_path):
    calls = []

    def fn(batch):
        calls.append(list(batch))
        return _fake_embed(batch)

    cache = rag.EmbeddingCache(embed_fn=fn, path=tmp_path / "c.npz")
    a = cache.embed(["x", "y", "x"], batch_size=1)
    assert sum(len(c) for c in calls) == 2 and cache.misses == 2 and cache.hits == 1
    b = cache.embed(["y", "x"])
    assert sum(len(c) for c in calls) == 2  # nothing new embedded
    np.testing.assert_array_equal(a[[1, 0]], b)
    again = rag.EmbeddingCache.load(tmp_path / "c.npz", embed_fn=fn)
    np.testing.assert_array_equal(again.embed(["x"])[0], a[0])
    assert sum(len(c) for c in calls) == 2


def test_real_model_cache_matches_direct_embedding():
    from labsupport import embeddings
    cache = rag.EmbeddingCache()
    v = cache.embed(["Carried-over days must be used by 31 March."])
    np.testing.assert_allclose(v, embeddings.embed(["Carried-over days must be used by 31 March."]),
                               atol=1e-5)


def test_top_k_matches_brute_force():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(200, 16))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = rng.normal(size=(7, 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    expect = np.argsort(-(q @ c.T), axis=1)[:, :5]
    np.testing.assert_array_equal(rag.top_k(q, c, 5), expect)


def test_chroma_retrieval_matches_numpy_cosine(tmp_path):
    chunks = rag.chunk_handbook(DOCS[:2], lambda t: rag.recursive(t, 600, 0))
    cache = rag.EmbeddingCache(embed_fn=_fake_embed)
    vecs = cache.embed([c.text for c in chunks])
    coll = rag.chroma_collection(chunks, vecs, "test-rag", path=tmp_path)
    coll = rag.chroma_collection(chunks, vecs, "test-rag", path=tmp_path)  # re-run safe
    assert coll.count() == len(chunks)
    q = _fake_embed(["how much leave"])
    got = coll.query(query_embeddings=q.tolist(), n_results=5)["ids"][0]
    assert got == [chunks[i].id for i in rag.top_k(q, vecs, 5)[0]]


def test_prompt_and_extractive_answer_cite_sources():
    chunks = rag.chunk_handbook([SAMPLE], lambda t: rag.structure_aware(t, 150))
    cache = rag.default_cache()
    vecs = cache.embed([c.text for c in chunks])
    hits = rag.retrieve("How much leave can I carry over?", chunks, vecs, cache, k=3)
    prompt = rag.build_prompt("How much leave can I carry over?", hits)
    assert prompt.count("\n[") >= 3 and prompt.rstrip().endswith("Answer:")
    text = rag.extractive_answer("How much leave can I carry over?", hits, cache)
    assert "five days" in text and re.search(r"\[\d\]", text)


def test_llm_answer_speaks_openai_chat_completions():
    import httpx

    def handler(request):
        assert request.url.path == "/v1/chat/completions"
        assert b"Answer:" in request.content
        return httpx.Response(200, json={"choices": [{"message": {"content": "25 days [1]"}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert rag.llm_answer("... Answer:", base_url="http://x/v1", client=client) == "25 days [1]"


# --- the exercise -------------------------------------------------------------------


def test_checker_starter_fails_solution_passes(tmp_path, monkeypatch):
    from labsupport.solutions import rag_pipeline as key
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    starter = checks.check_exercise(checks.starter_chunker)
    assert not starter.passed
    assert {c.name for c in starter.checks if not c.passed} >= {
        "no chunk over the model's limit", "IoU@5 above the fixed-size baseline"}
    assert checks.check_exercise(key.my_chunker, solution_mode=True).passed
    assert not checks.check_exercise(None).passed
    assert not checks.check_exercise(lambda t: ["not in the handbook"]).passed


# --- truncation and the explorer ----------------------------------------------------


def test_visible_parts_stop_at_the_models_limit():
    text = " ".join(f"word{i}" for i in range(400))  # far more than 254 word pieces
    doc = rag.Document("long.md", "# Long\n\n" + text)
    chunk = rag.make_chunks(doc, [(8, len(doc.text))])[0]
    seen = explore.visible_parts([chunk])[0]
    assert rag.count_pieces([seen.text]) == [rag.MAX_TEXT_PIECES]
    assert doc.text[seen.start:seen.end] == seen.text and seen.end < chunk.end
    assert explore.truncated_tail(chunk.text).strip() == doc.text[seen.end:].strip()
    short = rag.make_chunks(doc, [(0, 6)])[0]
    assert explore.visible_parts([short])[0] == short


def test_readable_gold_fraction_is_one_for_small_chunks_and_lower_for_the_starter():
    qs = [q for q in QUESTIONS if q.spans[0].doc == SAMPLE.name]
    small = rag.chunk_handbook([SAMPLE], lambda t: rag.structure_aware(t, 150))
    assert explore.readable_gold_fraction(small, qs) == pytest.approx(1.0)
    big = checks.learner_chunks([SAMPLE], checks.starter_chunker)
    assert explore.readable_gold_fraction(big, qs) < 0.9


def test_sweep_explorer_reads_precomputed_results_and_redraws():
    cache = rag.EmbeddingCache(embed_fn=_fake_embed)
    qs = [q for q in QUESTIONS if q.spans[0].doc == SAMPLE.name]
    results = explore.run_sweep([SAMPLE], qs, cache)
    assert set(results) == set(explore.sweep_configs())
    e = explore.evaluate("x", explore.sweep_chunking([SAMPLE], 400, 100), qs, cache)
    assert results[(400, 100)].iou == pytest.approx(e.iou)
    misses = cache.misses
    fig = explore.sweep_figure()
    text = explore.sweep_explorer(results, 400, 100, fig)
    assert cache.misses == misses  # nothing embedded by the callback
    assert f"IoU@5 {e.iou:.3f}" in text
    assert list(fig.data[0].x) == [s for s in explore.SWEEP_SIZES if s > 100]
    assert list(fig.data[2].x) == [400] and fig.data[3].y[0] == pytest.approx(e.iou)
    assert "not measured" in explore.sweep_explorer(results, 200, 200, fig)


def test_chroma_reindex_removes_chunks_of_an_old_version(tmp_path):
    chunks = rag.chunk_handbook([SAMPLE], lambda t: rag.recursive(t, 600, 0))
    vecs = rag.EmbeddingCache(embed_fn=_fake_embed).embed([c.text for c in chunks])
    rag.chroma_collection(chunks, vecs, "test-reindex", path=tmp_path)
    coll = rag.chroma_collection(chunks[:-3], vecs[:-3], "test-reindex", path=tmp_path)
    assert coll.count() == len(chunks) - 3
