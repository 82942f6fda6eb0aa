"""Answer key of notebook 05_rag_pipeline: a structure-aware chunker."""

from __future__ import annotations

import re

from labsupport import rag_pipeline as rag


def my_chunker(text: str) -> list[str]:
    """Cut at headings, then pack whole sentences and lines into chunks of at most
    150 word pieces (well under MiniLM's 254 of text), without overlap."""
    return [text[a:b] for a, b in rag.structure_aware(text, max_pieces=150, overlap_units=0)]


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
