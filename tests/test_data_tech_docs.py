"""Data tests of data/tech_docs/, the held-out RAG corpus (technical documentation of the
fictional Tern broker): every alternative's gold spans exist at their offsets and hold the
answer, `spans` is the first alternative, every document is covered, and the questions are
paraphrases, not copies of the documentation. Fast: no model is loaded."""

import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "tech_docs"
DOCS = {p.name: p.read_text(encoding="utf-8") for p in sorted((DATA / "docs").glob("*.md"))}
ROWS = [json.loads(line) for line in
        (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
COPY_RUN = 8  # a question may share no run of this many consecutive words with a document
# Alternatives (numbered from 1) that state the answer without its exact phrase, each explained
# in GOLD_NOTES.md ("Alternatives without the answer phrase"). All others must contain it.
ANSWER_IN_OTHER_WORDS = {
    "t002": {2}, "t003": {2}, "t005": {2}, "t008": {2}, "t013": {2}, "t015": {2},
    "t017": {2, 3, 4}, "t023": {5}, "t032": {2}, "t048": {3}, "t064": {2}, "t069": {2},
}


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def _runs(words, n=COPY_RUN):
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_corpus_shape():
    assert 16 <= len(DOCS) <= 20
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.md", name) for name in DOCS)
    words = sum(len(t.split()) for t in DOCS.values())
    assert 12_000 <= words <= 16_000, words
    assert all(t.startswith("# ") for t in DOCS.values())
    joined = "\n".join(DOCS.values())
    assert joined.count("\n|---") >= 15  # tables
    assert joined.count("```") >= 20  # fenced code blocks


def test_schema_and_split():
    assert len(ROWS) >= 60
    for row in ROWS:
        assert set(row) == {"id", "split", "question", "answer", "spans", "alternatives"}, \
            row.get("id")
        assert re.fullmatch(r"t\d{3}", row["id"]), row["id"]
        assert row["split"] == "heldout", row["id"]
        assert row["question"].strip() and row["answer"].strip() and row["spans"], row["id"]
        assert row["alternatives"] and all(row["alternatives"]), row["id"]
        for alt in row["alternatives"]:
            for s in alt:
                assert set(s) == {"doc", "start", "end", "text"}, row["id"]
    ids = [row["id"] for row in ROWS]
    assert len(set(ids)) == len(ids)


def test_spans_are_the_first_alternative():
    """`spans` is kept for old readers: it is the first, authored alternative."""
    for row in ROWS:
        assert row["spans"] == row["alternatives"][0], row["id"]


def test_every_span_is_its_document_slice():
    for row in ROWS:
        for alt in row["alternatives"]:
            for s in alt:
                assert s["doc"] in DOCS, (row["id"], s["doc"])
                assert 0 <= s["start"] < s["end"] <= len(DOCS[s["doc"]]), row["id"]
                assert DOCS[s["doc"]][s["start"]:s["end"]] == s["text"], row["id"]


def test_every_alternative_holds_the_answer():
    """The answer phrase is in every alternative's text, except the few listed (and explained
    in GOLD_NOTES.md) that state it in other words; the list is checked to be exact."""
    missing = {}
    for row in ROWS:
        for k, alt in enumerate(row["alternatives"], 1):
            if row["answer"] not in " ".join(s["text"] for s in alt):
                missing.setdefault(row["id"], set()).add(k)
    assert missing == ANSWER_IN_OTHER_WORDS
    assert all(1 not in ks for ks in missing.values())  # the authored answer always holds it


def test_spans_of_one_alternative_do_not_overlap():
    for row in ROWS:
        for spans in row["alternatives"]:
            for i, a in enumerate(spans):
                for b in spans[i + 1:]:
                    assert not (a["doc"] == b["doc"] and a["start"] < b["end"]
                                and b["start"] < a["end"]), row["id"]


def test_alternatives_of_one_question_differ():
    for row in ROWS:
        keys = [tuple(sorted((s["doc"], s["start"], s["end"]) for s in alt))
                for alt in row["alternatives"]]
        assert len(set(keys)) == len(keys), row["id"]


def test_every_document_is_covered_twice():
    count = {name: 0 for name in DOCS}
    for row in ROWS:
        for doc in {s["doc"] for alt in row["alternatives"] for s in alt}:
            count[doc] += 1
    assert all(n >= 2 for n in count.values()), {d: n for d, n in count.items() if n < 2}


def test_the_mix_has_multi_span_questions():
    assert sum(len(row["spans"]) > 1 for row in ROWS) >= 0.1 * len(ROWS)


def test_questions_are_paraphrased():
    doc_runs = set().union(*(_runs(_words(t)) for t in DOCS.values()))
    copied = {row["id"]: row["question"] for row in ROWS
              if _runs(_words(row["question"])) & doc_runs}
    assert not copied, copied


@pytest.mark.parametrize("question, copied", [
    ("Does the documentation say that there is no way to replay a queue from the beginning?",
     True),
    ("Could I re-run every job a queue has ever held?", False),
])
def test_the_paraphrase_check_can_tell(question, copied):
    """The check above is only as good as this: a lifted clause must be caught."""
    doc_runs = set().union(*(_runs(_words(t)) for t in DOCS.values()))
    assert bool(_runs(_words(question)) & doc_runs) is copied


def test_questions_match_their_source_file():
    """questions.jsonl is generated by make_spans.py from questions_source.jsonl."""
    source = [json.loads(line) for line in
              (DATA / "questions_source.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip()]

    def key(r):
        return (r["id"], r["question"], r["answer"],
                [(s["doc"], s["text"]) for s in r["spans"]],
                [[(s["doc"], s["text"]) for s in alt] for alt in r["alternatives"]])

    assert [key(r) for r in source] == [key(r) for r in ROWS]
