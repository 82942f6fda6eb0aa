"""Answer key of notebook 05_rag_pipeline: the steps, the scenario's chunker and the quiz."""

from __future__ import annotations

import re

from labsupport import rag_pipeline as rag

MAX_PIECES = 80  # chosen on the tuning questions: the highest IoU whose recall stays ≥ 0.95


def my_chunker(text: str) -> list[tuple[int, int]]:
    """A section at each heading (step 3), then whole sentences and lines packed into
    chunks of at most ``MAX_PIECES`` word pieces (step 4), as character spans."""
    return [(a + x, a + y) for a, b in rag.heading_sections(text)
            for x, y in rag.pack_units(text[a:b], MAX_PIECES)]


# --- the steps ------------------------------------------------------------------------------

def fixed_chunks(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Step 1: windows of ``size`` characters, each starting ``size - overlap`` later."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    spans, start = [], 0
    while start < len(text):
        spans.append((start, min(start + size, len(text))))
        if start + size >= len(text):
            break
        start += size - overlap
    return spans


def span_scores(gold: list[rag.Span], retrieved: list[rag.Chunk]) -> dict[str, float]:
    """Step 2: character recall, precision and IoU (overlapping chunks count each time)."""
    gold_chars = {(s.doc, i) for s in gold for i in range(s.start, s.end)}
    got_chars = {(c.doc, i) for c in retrieved for i in range(c.start, c.end)}
    covered = len(gold_chars & got_chars)
    retrieved_len = sum(c.end - c.start for c in retrieved)
    union = len(gold_chars) + retrieved_len - covered
    return {"recall": covered / len(gold_chars) if gold_chars else 0.0,
            "precision": covered / retrieved_len if retrieved_len else 0.0,
            "iou": covered / union if union else 0.0}


def heading_split(text: str) -> list[tuple[int, int]]:
    """Step 3: a section at each heading of level 1-3, never inside a code fence."""
    cuts, offset, fenced = [0], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,3}[ \t]+\S", line) and offset > 0:
            cuts.append(offset)
        offset += len(line)
    cuts.append(len(text))
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


def pack_sentences(text: str, max_pieces: int) -> list[tuple[int, int]]:
    """Step 4: whole sentences and lines, packed while the chunk stays within the budget;
    one that alone is over the budget is cut by word pieces."""
    out: list[tuple[int, int]] = []
    start = end = None
    for a, b in rag.units_of(text):
        if rag.count_pieces([text[a:b]])[0] > max_pieces:
            if start is not None:
                out.append((start, end))
                start = None
            out.extend((a + x, a + y) for x, y in rag.fixed_tokens(text[a:b], max_pieces))
        elif start is not None and rag.count_pieces([text[start:b]])[0] <= max_pieces:
            end = b
        else:
            if start is not None:
                out.append((start, end))
            start, end = a, b
    if start is not None:
        out.append((start, end))
    return out


QUIZ_ANSWERS = {"truncation": 1, "iou": 0.1, "overlap": 2, "held-out": 0,
                "second-corpus": 3}
