"""Write questions.jsonl from questions_source.jsonl: `python data/tech_docs/make_spans.py`.

In the source file each question lists its gold as `alternatives`: a list of alternatives,
each a list of spans that TOGETHER answer the question; any one alternative answers it. Each
span is given by its document and its exact text. This script finds the text's single
occurrence in the document (read as UTF-8) and writes every span with Python `str` offsets,
`start` and `end`, so that `document[start:end] == text`. The output keeps `spans`, equal to
the first alternative (the authored answer), for readers that know only that field.

It fails, writing nothing, if a span's text is absent from its document or occurs in it more
than once, if the source's `spans` is not its first alternative, if an alternative is empty or
lists the same span twice, if two spans of one alternative overlap, or if the answer is not in
the first alternative. An alternative other than the first that states the answer in other
words (without the answer phrase) is allowed and listed on standard output; GOLD_NOTES.md says
why for each one.

The source's extra field `kind` (which of the question types of README.md the question is)
is not copied to questions.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE / "docs"
SOURCE = HERE / "questions_source.jsonl"
OUTPUT = HERE / "questions.jsonl"
SPLIT = "heldout"  # this corpus is never used to tune anything


def locate(document: str, text: str, where: str) -> int:
    """The start of the only occurrence of ``text`` in ``document``; raise otherwise."""
    if not text:
        raise ValueError(f"{where}: empty span text")
    first = document.find(text)
    if first < 0:
        raise ValueError(f"{where}: span text not found: {text[:70]!r}")
    if document.find(text, first + 1) >= 0:
        raise ValueError(f"{where}: span text occurs more than once: {text[:70]!r}")
    return first


def _alternative(raw: list[dict], documents: dict[str, str], where: str) -> list[dict]:
    """One alternative with offsets; raise if it is empty or its spans overlap."""
    if not raw:
        raise ValueError(f"{where}: empty alternative")
    spans = []
    for span in raw:
        if span["doc"] not in documents:
            raise ValueError(f"{where}: no document {span['doc']!r}")
        start = locate(documents[span["doc"]], span["text"], where)
        spans.append({"doc": span["doc"], "start": start,
                      "end": start + len(span["text"]), "text": span["text"]})
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            if a["doc"] == b["doc"] and a["start"] < b["end"] and b["start"] < a["end"]:
                raise ValueError(f"{where}: spans overlap (or a span is listed twice)")
    return spans


def build(source: Path = SOURCE, docs_dir: Path = DOCS,
          notes: list[str] | None = None) -> list[dict]:
    """The rows of questions.jsonl, computed from ``source``.

    ``notes`` collects the alternatives (after the first) that do not contain the answer."""
    documents = {p.name: p.read_text(encoding="utf-8") for p in sorted(docs_dir.glob("*.md"))}
    rows, seen = [], set()
    for line_no, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        qid = item["id"]
        where = f"{source.name}:{line_no} ({qid})"
        if qid in seen:
            raise ValueError(f"{where}: duplicate id")
        seen.add(qid)
        if not item.get("alternatives"):
            raise ValueError(f"{where}: no alternatives")
        if "spans" in item and item["spans"] != item["alternatives"][0]:
            raise ValueError(f"{where}: `spans` differs from the first alternative")
        alternatives = [_alternative(alt, documents, f"{where} alternative {k}")
                        for k, alt in enumerate(item["alternatives"], 1)]
        keys = [sorted((s["doc"], s["start"]) for s in alt) for alt in alternatives]
        if len({tuple(k) for k in keys}) != len(keys):
            raise ValueError(f"{where}: two alternatives are the same")
        for k, alt in enumerate(alternatives, 1):
            if item["answer"] not in " ".join(s["text"] for s in alt):
                if k == 1:
                    raise ValueError(f"{where}: answer {item['answer']!r} is not in its spans")
                if notes is not None:
                    notes.append(f"{qid} alternative {k}")
        rows.append({"id": qid, "split": SPLIT, "question": item["question"],
                     "answer": item["answer"], "spans": alternatives[0],
                     "alternatives": alternatives})
    return rows


def main() -> int:
    notes: list[str] = []
    try:
        rows = build(notes=notes)
    except ValueError as err:
        print(f"make_spans: {err}", file=sys.stderr)
        return 1
    OUTPUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
    n_alt = sum(len(r["alternatives"]) for r in rows)
    print(f"wrote {len(rows)} questions, {n_alt} alternatives, to {OUTPUT.name}")
    if notes:
        print("alternatives that state the answer without its phrase (see GOLD_NOTES.md): "
              + ", ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
