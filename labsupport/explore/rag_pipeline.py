"""Explore and measure notebook 05_rag_pipeline: the baseline chunkers, the two corpora and
their gold questions, the evaluation of a chunking against them, what MiniLM never reads and
what length costs it, and the chunk-size/overlap explorer.

The mechanism (chunking blocks, cache, Chroma, retrieval, answers, span metrics) is in
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

# --- a baseline: LangChain-style recursive splitting ------------------------------

RECURSIVE_SEPARATORS = ("\n\n", "\n", " ", "")  # LangChain's default hierarchy


def _split_on(text: str, start: int, end: int, sep: str) -> list[tuple[int, int]]:
    """text[start:end] split before each ``sep`` (kept, as LangChain's keep_separator=True)."""
    if sep == "":
        return [(i, i + 1) for i in range(start, end)]
    cuts, at = [start], text.find(sep, start + 1, end)
    while at >= 0:
        cuts.append(at)
        at = text.find(sep, at + 1, end)
    cuts.append(end)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def recursive(text: str, size: int = 800, overlap: int = 0,
              separators: Sequence[str] = RECURSIVE_SEPARATORS,
              length: Callable[[str], int] = len) -> list[tuple[int, int]]:
    """LangChain-style recursive splitting: split on the first separator that occurs,
    recurse into pieces still longer than ``size``, then merge neighbours up to ``size``
    keeping up to ``overlap`` of the previous chunk's tail. Spans, whitespace stripped."""
    if not 0 <= overlap < size:
        raise ValueError("need 0 <= overlap < size")

    def pieces(a: int, b: int, seps: Sequence[str]) -> list[tuple[int, int]]:
        sep_i = next((i for i, s in enumerate(seps) if s == "" or s in text[a:b]), len(seps) - 1)
        out = []
        for p in _split_on(text, a, b, seps[sep_i]):
            if length(text[p[0]:p[1]]) > size and sep_i + 1 < len(seps):
                out.extend(pieces(p[0], p[1], seps[sep_i + 1:]))
            else:
                out.append(p)
        return out

    units, chunks, current = pieces(0, len(text), tuple(separators)), [], []
    for unit in units:
        if current and length(text[current[0][0]:unit[1]]) > size:
            chunks.append((current[0][0], current[-1][1]))
            while current and (length(text[current[0][0]:current[-1][1]]) > overlap
                               or length(text[current[0][0]:unit[1]]) > size):
                current.pop(0)  # keep only a tail of at most `overlap`
        current.append(unit)
    if current:
        chunks.append((current[0][0], current[-1][1]))
    return rag.strip_spans(text, chunks)


# --- the chunkers the notebook compares ---------------------------------------------

# The baselines every chunking is compared with. The two fixed-size ones set the scenario's
# IoU bar; the last two are the extremes the taught chunker sits between.
CHUNKERS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "fixed 500 chars, overlap 100": lambda t: rag.fixed_chars(t, 500, 100),
    "fixed 128 tokens": lambda t: rag.fixed_tokens(t, 128, 0),
    "recursive 800/0": lambda t: recursive(t, 800, 0),
    "paragraphs": rag.paragraphs,
    "one chunk per section": rag.heading_sections,
    "one sentence per chunk": lambda t: rag.strip_spans(t, rag.units_of(t)),
}
FIXED_SIZE = ("fixed 500 chars, overlap 100", "fixed 128 tokens")


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
    ``recursive`` above, which follows the same separator hierarchy."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError:
        return {f"recursive {s}/{o} (LangChain emulated)":
                (lambda t, s=s, o=o: recursive(t, s, o)) for s, o in ((4000, 200), (200, 0))}

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


# The handbook is the course's corpus (its tuning questions may be used to choose settings);
# the tech docs are a second, held-out corpus: documentation of a fictional message broker,
# never used to tune anything.
CORPORA = {"handbook": (rag.DATA_DIR, "handbook"), "tech docs": (rag.TECH_DOCS_DIR, "docs")}


def load_corpus(name: str) -> tuple[list[Document], list[Question]]:
    """A corpus's documents and its held-out questions (see :data:`CORPORA`)."""
    data_dir, folder = CORPORA[name]
    return rag.load_handbook(data_dir, folder), load_questions("heldout", data_dir)


@dataclass
class Evaluation:
    """Mean scores of one chunker over a question set, and the per-question recalls."""

    name: str
    n_chunks: int
    recall: float
    precision: float
    iou: float
    per_question: list[tuple[Question, float]]  # (question, recall@k)
    # per question: recall, precision, iou, and the characters retrieved
    scores: list[dict[str, float]] = field(default_factory=list)


def evaluate(name: str, chunks: Sequence[Chunk], questions: Sequence[Question],
             cache: EmbeddingCache, k: int = 5) -> Evaluation:
    """Embed chunks and questions (through the cache) and score the top ``k`` of each
    question by its best-answered alternative."""
    chunk_vecs = cache.embed([c.text for c in chunks])
    q_vecs = cache.embed([q.question for q in questions])
    scores, per_q = [], []
    for q, row in zip(questions, rag.top_k(q_vecs, chunk_vecs, k), strict=True):
        top = [chunks[i] for i in row]
        s = {**best_alternative(q, top), "retrieved": float(sum(c.end - c.start for c in top))}
        scores.append(s)
        per_q.append((q, s["recall"]))
    mean = {m: float(np.mean([s[m] for s in scores])) for m in ("recall", "precision", "iou")}
    return Evaluation(name, len(chunks), mean["recall"], mean["precision"], mean["iou"],
                      per_q, scores)


def comparison_row(corpus: str, name: str, chunks: Sequence[Chunk],
                   questions: Sequence[Question], cache: EmbeddingCache) -> dict[str, Any]:
    """One row of the chunker table: size of the chunks and the top-5 span scores."""
    e = evaluate(name, chunks, questions, cache)
    pieces = rag.count_pieces([c.text for c in chunks])
    return {"corpus": corpus, "chunker": name, "chunks": len(chunks),
            f"over {rag.TRAINED_PIECES} pieces": sum(n > rag.TRAINED_PIECES for n in pieces),
            "truncated (over 254)": sum(n > MAX_TEXT_PIECES for n in pieces),
            "recall@5": e.recall, "precision@5": e.precision, "IoU@5": e.iou}


def compare_chunkers(chunkers: dict[str, Callable[[str], Any]], cache: EmbeddingCache,
                     corpora: Sequence[str] = tuple(CORPORA)) -> list[dict[str, Any]]:
    """The table of every chunker on every corpus (held-out questions, top 5)."""
    rows = []
    for corpus in corpora:
        docs, questions = load_corpus(corpus)
        for name, chunker in chunkers.items():
            rows.append(comparison_row(corpus, name, rag.chunk_handbook(docs, chunker),
                                       questions, cache))
    return rows


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


# --- does a longer chunk hide its answer? --------------------------------------------

DILUTION_LENGTHS = (32, 64, 128, 192, 254, 320)  # word pieces of the whole chunk


def dilution_texts(question: Question, doc: Document, length: int) -> tuple[str, str] | None:
    """Two chunks of ``length`` word pieces holding the question's (one) gold span: the
    answer first, then other text of its document; and that text first, the answer last.
    None when the answer or the document is too short."""
    span = question.spans[0]
    gold = doc.text[span.start:span.end]
    filler = doc.text[:span.start] + doc.text[span.end:]
    offsets = rag.word_piece_offsets(filler)
    need = length - rag.count_pieces([gold])[0]
    if len(question.spans) > 1 or need < 1 or need > len(offsets):
        return None
    rest = filler[: offsets[need - 1][1]]
    return f"{gold} {rest}", f"{rest} {gold}"


def dilution(questions: Sequence[Question], docs: Sequence[Document], cache: EmbeddingCache,
             lengths: Sequence[int] = DILUTION_LENGTHS) -> list[dict[str, Any]]:
    """Mean cosine similarity of each question with a chunk holding its answer, as the chunk
    grows: answer first, and answer last. Questions whose answer fits the shortest length."""
    by_name = {d.name: d for d in docs}
    texts = {n: [dilution_texts(q, by_name[q.spans[0].doc], n) for q in questions]
             for n in lengths}  # built once: each call tokenizes the document
    usable = [i for i in range(len(questions)) if all(texts[n][i] for n in lengths)]
    q_vecs = cache.embed([questions[i].question for i in usable])
    rows = []
    for n in lengths:
        first, last = zip(*(texts[n][i] for i in usable), strict=True)
        rows.append({"chunk length (word pieces)": n, "questions": len(usable),
                     "answer first": float((cache.embed(list(first)) * q_vecs).sum(1).mean()),
                     "answer last": float((cache.embed(list(last)) * q_vecs).sum(1).mean())})
    return rows


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
    return rag.chunk_handbook(docs, lambda t: recursive(t, size, overlap))


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
