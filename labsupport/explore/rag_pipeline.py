"""Explore and measure notebook 05_rag_pipeline: the gold questions, the evaluation of a
chunking against them, what MiniLM never reads, and the chunk-size/overlap explorer.

The mechanism (chunkers, cache, Chroma, retrieval, answers, span metrics) is in
``labsupport.rag_pipeline``. Evaluation follows Chroma's technical report "Evaluating
Chunking Strategies for Retrieval" (Smith & Troynikov, 2024), with characters in place of
tokens: for the top-k chunks of a question, recall = gold characters covered / gold
characters, precision = gold characters covered / retrieved characters (overlapping chunks
count every time), IoU = covered / (gold + retrieved - covered).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import rag_pipeline as rag
from labsupport.rag_pipeline import MAX_TEXT_PIECES, Chunk, Document, EmbeddingCache, Span

# --- the chunkers the notebook compares ---------------------------------------------

CHUNKERS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "fixed 800 chars": lambda t: rag.fixed_chars(t, 800, 0),
    "fixed 200 tokens": lambda t: rag.fixed_tokens(t, 200, 0),
    "recursive 800/0": lambda t: rag.recursive(t, 800, 0),
    "structure 200 pieces": lambda t: rag.structure_aware(t, 200, 0),
}


def locate(doc: Document, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Map chunk strings (in document order, overlap allowed) back to character spans.

    Raises ValueError naming the first piece that is not a verbatim part of the document.
    """
    spans, cursor = [], 0
    for i, piece in enumerate(pieces):
        if not isinstance(piece, str):
            raise TypeError(f"chunk {i} of {doc.name} is {type(piece).__name__}, not str")
        if not piece.strip():
            continue
        at = doc.text.find(piece, cursor)
        if at < 0:
            at = doc.text.find(piece)  # out of order: accept, but search from the start
        if at < 0:
            raise ValueError(f"chunk {i} of {doc.name} is not verbatim text of the "
                             f"document: {piece[:60]!r}")
        spans.append((at, at + len(piece)))
        cursor = at + 1  # the next chunk may overlap this one
    return spans


def langchain_baselines() -> dict[str, Callable[[str], list[tuple[int, int]]]]:
    """LangChain's RecursiveCharacterTextSplitter at its defaults (4000/200) and at 200/0.

    Uses ``langchain-text-splitters`` when installed (spans located in the source), else
    the mechanism's ``rag.recursive``, which follows the same separator hierarchy."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError:
        return {f"recursive {s}/{o} (LangChain emulated)":
                (lambda t, s=s, o=o: rag.recursive(t, s, o)) for s, o in ((4000, 200), (200, 0))}

    def real(size: int, overlap: int) -> Callable[[str], list[tuple[int, int]]]:
        splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)
        return lambda t: locate(Document("doc", t), splitter.split_text(t))

    return {f"LangChain {s}/{o}": real(s, o) for s, o in ((4000, 200), (200, 0))}


# --- the gold questions and the evaluation ------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    split: str  # "tuning" or "heldout"
    question: str
    answer: str
    spans: tuple[Span, ...]  # the first alternative
    # Every way the docs state the answer: each alternative is a set of spans that answer
    # together; retrieving any one alternative answers the question.
    alternatives: tuple[tuple[Span, ...], ...] = ()


def load_questions(split: str | None = None, data_dir: Path = rag.DATA_DIR) -> list[Question]:
    """Questions with gold spans; ``split`` is "tuning", "heldout" or None for all. A file
    without ``alternatives`` (the handbook's) has one: ``spans``."""
    out = []
    for line in (data_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if split is None or row["split"] == split:
            alts = tuple(tuple(Span(s["doc"], s["start"], s["end"]) for s in alt)
                         for alt in row.get("alternatives") or [row["spans"]])
            out.append(Question(row["id"], row["split"], row["question"], row["answer"],
                                alts[0], alts))
    return out


def best_alternative(question: Question, retrieved: Sequence[Chunk]) -> dict[str, float]:
    """The span scores of the question's best-answered alternative (by recall, then IoU)."""
    return max((rag.span_scores(alt, retrieved) for alt in question.alternatives or
                (question.spans,)), key=lambda s: (s["recall"], s["iou"]))


@dataclass
class Evaluation:
    """Mean scores of one chunker over a question set, and the per-question recalls."""

    name: str
    n_chunks: int
    recall: float
    precision: float
    iou: float
    recall_at: dict[int, float]  # k -> fraction of gold spans fully inside the top k
    per_question: list[tuple[Question, float]]  # (question, recall@k)
    # per question: recall, precision, iou, and the characters retrieved
    scores: list[dict[str, float]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {"chunker": self.name, "chunks": self.n_chunks,
                "recall@5": round(self.recall, 3), "precision@5": round(self.precision, 3),
                "IoU@5": round(self.iou, 3),
                **{f"span hit@{k}": round(v, 3) for k, v in self.recall_at.items()}}


def evaluate(name: str, chunks: Sequence[Chunk], questions: Sequence[Question],
             cache: EmbeddingCache, k: int = 5, ks: Sequence[int] = (1, 3, 5, 10)) -> Evaluation:
    """Embed chunks and questions (through the cache) and score the top ``k``."""
    chunk_vecs = cache.embed([c.text for c in chunks])
    q_vecs = cache.embed([q.question for q in questions])
    ranked = rag.top_k(q_vecs, chunk_vecs, max(k, *ks))
    scores, per_q, hits = [], [], {kk: 0 for kk in ks}
    n_spans = sum(len(q.spans) for q in questions)
    for q, row in zip(questions, ranked, strict=True):
        top = [chunks[i] for i in row[:k]]
        s = {**best_alternative(q, top), "retrieved": float(sum(c.end - c.start for c in top))}
        scores.append(s)
        per_q.append((q, s["recall"]))
        for kk in ks:
            got = [chunks[i] for i in row[:kk]]
            hits[kk] += sum(rag.span_scores([sp], got)["recall"] >= 0.999 for sp in q.spans)
    mean = {m: float(np.mean([s[m] for s in scores])) for m in ("recall", "precision", "iou")}
    return Evaluation(name, len(chunks), mean["recall"], mean["precision"], mean["iou"],
                      {kk: hits[kk] / n_spans for kk in ks}, per_q, scores)


# --- what MiniLM never reads --------------------------------------------------------


def oversized(chunks: Sequence[Chunk], limit: int = MAX_TEXT_PIECES) -> list[tuple[Chunk, int]]:
    """Chunks the model would truncate, with their word-piece counts."""
    counts = rag.count_pieces([c.text for c in chunks])
    return [(c, n) for c, n in zip(chunks, counts, strict=True) if n > limit]


def warn_oversized(chunks: Sequence[Chunk], limit: int = MAX_TEXT_PIECES) -> int:
    """Print a visible warning for chunks over the model's limit; return how many."""
    over = oversized(chunks, limit)
    if over:
        worst = max(over, key=lambda x: x[1])
        print(f"WARNING: {len(over)} of {len(chunks)} chunks exceed {limit} word pieces; "
              f"all-MiniLM-L6-v2 silently drops the rest (worst: {worst[1]} pieces in "
              f"{worst[0].citation()}).")
    return len(over)


def truncated_tail(text: str, limit: int = MAX_TEXT_PIECES) -> str:
    """The part of ``text`` the model never sees (empty if it fits)."""
    offsets = rag.word_piece_offsets(text)
    return text[offsets[limit][0]:] if len(offsets) > limit else ""


def visible_parts(chunks: Sequence[Chunk], limit: int = MAX_TEXT_PIECES) -> list[Chunk]:
    """Each chunk cut to what the model actually reads: its first ``limit`` word pieces."""
    out = []
    for c in chunks:
        offsets = rag.word_piece_offsets(c.text)
        end = c.start + offsets[limit - 1][1] if len(offsets) > limit else c.end
        out.append(Chunk(c.doc, c.start, end, c.text[: end - c.start], c.headings))
    return out


def readable_gold_fraction(chunks: Sequence[Chunk], questions: Sequence[Question]) -> float:
    """Share of gold characters inside the part of some chunk the model reads: the best
    recall any retriever could reach with these chunks."""
    seen = visible_parts(chunks)
    by_doc: dict[str, list[Chunk]] = {}
    for c in seen:
        by_doc.setdefault(c.doc, []).append(c)
    gold = [s for q in questions for s in q.spans]
    covered = sum(rag.span_scores([s], by_doc.get(s.doc, []))["recall"] * (s.end - s.start)
                  for s in gold)
    return covered / sum(s.end - s.start for s in gold)


# --- explore: chunk size and overlap ------------------------------------------------

SWEEP_SIZES = (200, 400, 800, 1600)  # characters, recursive chunker
SWEEP_OVERLAPS = (0, 100, 200)  # characters carried over from the previous chunk


@dataclass(frozen=True)
class SweepPoint:
    """Scores of the recursive chunker at one (size, overlap), top 5 chunks."""

    size: int
    overlap: int
    n_chunks: int
    n_oversized: int  # chunks longer than the model reads
    recall: float
    precision: float
    iou: float


def sweep_configs() -> list[tuple[int, int]]:
    """Every (size, overlap) of the sweep with overlap < size."""
    return [(s, o) for s in SWEEP_SIZES for o in SWEEP_OVERLAPS if o < s]


def sweep_chunking(docs: Sequence[Document], size: int, overlap: int) -> list[Chunk]:
    return rag.chunk_handbook(docs, lambda t: rag.recursive(t, size, overlap))


def run_sweep(docs: Sequence[Document], questions: Sequence[Question],
              cache: EmbeddingCache) -> dict[tuple[int, int], SweepPoint]:
    """Evaluate every configuration once (the slow part); the explorer only reads this."""
    out = {}
    for size, overlap in sweep_configs():
        chunks = sweep_chunking(docs, size, overlap)
        e = evaluate(f"recursive {size}/{overlap}", chunks, questions, cache)
        out[(size, overlap)] = SweepPoint(size, overlap, len(chunks), len(oversized(chunks)),
                                          e.recall, e.precision, e.iou)
    return out


def sweep_figure() -> Any:
    """The explorer's figure: recall@5 (left axis) and IoU@5 (right axis) against size."""
    from labsupport import plots

    fig = plots.figure("Recursive chunker: recall and IoU of the top 5 chunks",
                       ("chunk size", "characters"), ("span recall@5", None))
    fig.update_layout(yaxis=dict(range=[0, 1.02]),
                      yaxis2=dict(title="IoU@5", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero", tickmode="auto", tickformat=".2f"))
    plots.log_axis(fig, "x", tickvals=SWEEP_SIZES)  # the sizes measured, written in full
    fig.add_scatter(name="recall@5", mode="lines+markers")
    fig.add_scatter(name="IoU@5", mode="lines+markers", yaxis="y2", line=dict(dash="dash"))
    fig.add_scatter(name="selected", mode="markers", showlegend=False,
                    marker=dict(size=16, symbol="circle-open", line=dict(width=3), color="#000"))
    fig.add_scatter(name="selected IoU", mode="markers", yaxis="y2", showlegend=False,
                    marker=dict(size=16, symbol="diamond-open", line=dict(width=3), color="#000"))
    return plots.figure_widget(fig)


def sweep_explorer(results: dict[tuple[int, int], SweepPoint], size: int, overlap: int,
                   fig: Any = None) -> str:
    """Widget callback: redraw the curves for ``overlap``, mark ``size``; return a summary.

    Reads precomputed results only (no chunking, no embedding), so it takes milliseconds.
    """
    if (size, overlap) not in results:
        return f"overlap {overlap} must be smaller than the chunk size {size}: not measured"
    line = [results[(s, overlap)] for s in SWEEP_SIZES if (s, overlap) in results]
    p = results[(size, overlap)]
    if fig is not None:
        with fig.batch_update():
            fig.data[0].x = fig.data[1].x = [q.size for q in line]
            fig.data[0].y = [q.recall for q in line]
            fig.data[1].y = [q.iou for q in line]
            fig.data[2].x = fig.data[3].x = [size]
            fig.data[2].y, fig.data[3].y = [p.recall], [p.iou]
            fig.layout.title.text = f"Recursive chunker, overlap {overlap} characters"
    return (f"size {size}, overlap {overlap}: {p.n_chunks} chunks, {p.n_oversized} over "
            f"{MAX_TEXT_PIECES} word pieces; recall@5 {p.recall:.3f}, precision@5 "
            f"{p.precision:.3f}, IoU@5 {p.iou:.3f}")
