"""Write questions.jsonl from questions_source.jsonl: `python data/tech_docs/make_spans.py`.

In the source file each gold span is given by its document and its exact text. This script
finds the text's single occurrence in the document (read as UTF-8) and writes the question
with Python `str` offsets, `start` and `end`, so that `document[start:end] == text`. It fails,
writing nothing, if a span's text is absent from its document or occurs in it more than once,
if a question's answer is not inside its spans, or if two spans of one question overlap.

The source's extra field `kind` (which of the question types of README.md the question is)
is not copied to questions.jsonl, whose schema is that of data/hr_policies/questions.jsonl.
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


def build(source: Path = SOURCE, docs_dir: Path = DOCS) -> list[dict]:
    """The rows of questions.jsonl, computed from ``source``."""
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
        spans = []
        for span in item["spans"]:
            if span["doc"] not in documents:
                raise ValueError(f"{where}: no document {span['doc']!r}")
            start = locate(documents[span["doc"]], span["text"], where)
            spans.append({"doc": span["doc"], "start": start,
                          "end": start + len(span["text"]), "text": span["text"]})
        for i, a in enumerate(spans):
            for b in spans[i + 1:]:
                if a["doc"] == b["doc"] and a["start"] < b["end"] and b["start"] < a["end"]:
                    raise ValueError(f"{where}: spans overlap")
        if item["answer"] not in " ".join(s["text"] for s in spans):
            raise ValueError(f"{where}: answer {item['answer']!r} is not in its spans")
        rows.append({"id": qid, "split": SPLIT, "question": item["question"],
                     "answer": item["answer"], "spans": spans})
    return rows


def main() -> int:
    try:
        rows = build()
    except ValueError as err:
        print(f"make_spans: {err}", file=sys.stderr)
        return 1
    OUTPUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
    print(f"wrote {len(rows)} questions to {OUTPUT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
