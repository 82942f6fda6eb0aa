"""RAG pipeline: chunk, embed, store, retrieve, answer, and measure it. Serves
``notebooks/05_rag_pipeline.ipynb``.

Ingestion: a chunker cuts each handbook document into :class:`Chunk` objects (document,
character span, heading path); chunks are embedded with all-MiniLM-L6-v2 through an
:class:`EmbeddingCache` keyed by a hash of the text (a re-run embeds nothing again) and
stored in embedded Chroma. Query: embed the question, take the top-k chunks, build the
prompt, answer extractively (offline) or through an OpenAI-compatible endpoint.

Measurement follows Chroma's technical report "Evaluating Chunking Strategies for
Retrieval" (Smith & Troynikov, 2024), with characters in place of tokens: for the top-k
chunks of a question, recall = gold characters covered / gold characters, precision =
gold characters covered / retrieved characters (overlapping chunks count every time),
IoU = covered / (gold + retrieved - covered).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import embeddings
from labsupport import exercises as ex

EXERCISE_ID = "05_rag_pipeline"
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "hr_policies"
# all-MiniLM-L6-v2 reads at most 256 word pieces, [CLS] and [SEP] included: 254 of text.
MAX_TEXT_PIECES = embeddings.MAX_SEQ_LENGTH - 2
ENV_LLM_URL = "LABSUPPORT_LLM_BASE_URL"  # e.g. http://127.0.0.1:11434/v1 (Ollama, vLLM, …)
ENV_LLM_MODEL = "LABSUPPORT_LLM_MODEL"
ENV_LLM_KEY = "LABSUPPORT_LLM_API_KEY"


# --- data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One policy of the handbook."""

    name: str  # file name, e.g. "02_annual_leave.md"
    text: str

    @property
    def title(self) -> str:
        first = self.text.splitlines()[0] if self.text else ""
        return first.lstrip("# ").strip()


@dataclass(frozen=True)
class Span:
    doc: str
    start: int  # character offsets into Document.text, end exclusive
    end: int


@dataclass(frozen=True)
class Question:
    id: str
    split: str  # "tuning" or "heldout"
    question: str
    answer: str
    spans: tuple[Span, ...]


def load_handbook(data_dir: Path = DATA_DIR) -> list[Document]:
    """The handbook's documents, in file order."""
    return [Document(p.name, p.read_text(encoding="utf-8"))
            for p in sorted((data_dir / "handbook").glob("*.md"))]


def load_questions(split: str | None = None, data_dir: Path = DATA_DIR) -> list[Question]:
    """Questions with gold spans; ``split`` is "tuning", "heldout" or None for all."""
    out = []
    for line in (data_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if split is None or row["split"] == split:
            spans = tuple(Span(s["doc"], s["start"], s["end"]) for s in row["spans"])
            out.append(Question(row["id"], row["split"], row["question"], row["answer"], spans))
    return out


# --- chunks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A piece of a document, tied to its source: ``doc.text[start:end] == text``."""

    doc: str
    start: int
    end: int
    text: str
    headings: tuple[str, ...] = ()  # heading path at the chunk's start, outermost first

    @property
    def id(self) -> str:
        """Stable id: the same text at the same place gets the same id on every run."""
        return hashlib.sha1(f"{self.doc}:{self.start}:{self.end}".encode()).hexdigest()[:16]

    def citation(self) -> str:
        return " > ".join((self.doc, *self.headings[1:])) if self.headings else self.doc


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*$", re.MULTILINE)


def heading_index(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """(offset, heading path) at each Markdown heading, in order."""
    out, path = [], []
    for m in _HEADING.finditer(text):
        level = len(m.group(1))
        path = [*path[: level - 1], m.group(2)]
        out.append((m.start(), tuple(path)))
    return out


def headings_at(index: list[tuple[int, tuple[str, ...]]], offset: int) -> tuple[str, ...]:
    """The heading path in force at ``offset``."""
    i = bisect.bisect_right([o for o, _ in index], offset) - 1
    return index[i][1] if i >= 0 else ()


_PARAGRAPH = re.compile(r"[^\n](?:.|\n(?!\n))*")  # a run of lines up to a blank line


def paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of the paragraphs of ``text`` (blocks between blank lines; a list or a table is
    one block), headings left out."""
    return [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)
            if not m.group().startswith("#")]


def make_chunks(doc: Document, spans: Iterable[tuple[int, int]]) -> list[Chunk]:
    """Chunks from character spans; spans of whitespace only are dropped."""
    index = heading_index(doc.text)
    out = []
    for start, end in spans:
        piece = doc.text[start:end]
        if not piece.strip():
            continue
        out.append(Chunk(doc.name, start, end, piece, headings_at(index, start)))
    return out


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


# --- chunkers: each maps a document's text to character spans -----------------------


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def fixed_chars(text: str, size: int = 800, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of ``size`` characters, each starting ``size - overlap`` after the last."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    step, out = size - overlap, []
    for start in range(0, len(text), step):
        out.append((start, min(start + size, len(text))))
        if start + size >= len(text):
            break
    return out


def word_piece_offsets(text: str) -> list[tuple[int, int]]:
    """Character span of every word piece of ``text`` under the MiniLM tokenizer."""
    tokenizer = embeddings.get_model().tokenizer
    with warnings.catch_warnings():  # "sequence longer than 512": we only want offsets
        warnings.simplefilter("ignore")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
    return [tuple(o) for o in enc["offset_mapping"]]


def fixed_tokens(text: str, size: int = 200, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of ``size`` word pieces (MiniLM tokenizer), stepping ``size - overlap``."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    offsets = word_piece_offsets(text)
    step, out = size - overlap, []
    for i in range(0, len(offsets), step):
        window = offsets[i: i + size]
        out.append((window[0][0], window[-1][1]))
        if i + size >= len(offsets):
            break
    return out


RECURSIVE_SEPARATORS = ("\n\n", "\n", " ", "")  # LangChain's default hierarchy


def _split_on(text: str, start: int, end: int, sep: str) -> list[tuple[int, int]]:
    """Pieces of text[start:end] split before each ``sep`` (the separator stays attached to
    the following piece, as LangChain's keep_separator=True does)."""
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
    return [s for s in (_strip(text, a, b) for a, b in chunks) if s[1] > s[0]]


_SENTENCE_END = re.compile(r"(?<=[.!?:;])[ \t]+(?=\S)|\n+")


def units_of(text: str) -> list[tuple[int, int]]:
    """Sentences and lines (list items, table rows) of ``text`` as contiguous spans."""
    cuts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def count_pieces(texts: Sequence[str]) -> list[int]:
    """Word pieces per text (no special tokens), in one tokenizer call."""
    if not texts:
        return []
    tokenizer = embeddings.get_model().tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [len(x) for x in ids]


def structure_aware(text: str, max_pieces: int = 200, overlap_units: int = 0,
                    min_heading_level: int = 3) -> list[tuple[int, int]]:
    """Split at headings (level ≤ ``min_heading_level``), then pack whole sentences and lines
    into chunks of at most ``max_pieces`` word pieces, carrying the last ``overlap_units``
    sentences into the next chunk. A sentence longer than the limit is cut by word pieces."""
    bounds = [m.start() for m in _HEADING.finditer(text) if len(m.group(1)) <= min_heading_level]
    sections = list(zip([0, *bounds], [*bounds, len(text)], strict=True))
    out: list[tuple[int, int]] = []
    for a, b in sections:
        units = [(a + x, a + y) for x, y in units_of(text[a:b])]
        sizes = count_pieces([text[x:y] for x, y in units])
        current: list[int] = []  # indices into units
        for i, n in enumerate(sizes):
            if n > max_pieces:  # one huge sentence: flush, then cut it by word pieces
                if current:
                    out.append((units[current[0]][0], units[current[-1]][1]))
                    current = []
                u0 = units[i][0]
                out.extend((u0 + x, u0 + y) for x, y in
                           fixed_tokens(text[units[i][0]:units[i][1]], max_pieces))
                continue
            if current and sum(sizes[j] for j in current) + n > max_pieces:
                out.append((units[current[0]][0], units[current[-1]][1]))
                current = current[-overlap_units:] if overlap_units else []
                while current and sum(sizes[j] for j in current) + n > max_pieces:
                    current.pop(0)
            current.append(i)
        if current:
            out.append((units[current[0]][0], units[current[-1]][1]))
    return [s for s in (_strip(text, x, y) for x, y in out) if s[1] > s[0]]


CHUNKERS: dict[str, Callable[[str], list[tuple[int, int]]]] = {
    "fixed 800 chars": lambda t: fixed_chars(t, 800, 0),
    "fixed 200 tokens": lambda t: fixed_tokens(t, 200, 0),
    "recursive 800/0": lambda t: recursive(t, 800, 0),
    "structure 200 pieces": lambda t: structure_aware(t, 200, 0),
}
BASELINE = "fixed 200 tokens"  # the course's fixed-size baseline for the exercise


def chunk_handbook(docs: Sequence[Document],
                   chunker: Callable[[str], list[tuple[int, int]]]) -> list[Chunk]:
    """Apply a span chunker to every document."""
    return [c for d in docs for c in make_chunks(d, chunker(d.text))]


def oversized(chunks: Sequence[Chunk], limit: int = MAX_TEXT_PIECES) -> list[tuple[Chunk, int]]:
    """Chunks the model would truncate, with their word-piece counts."""
    counts = count_pieces([c.text for c in chunks])
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
    offsets = word_piece_offsets(text)
    return text[offsets[limit][0]:] if len(offsets) > limit else ""


def visible_parts(chunks: Sequence[Chunk], limit: int = MAX_TEXT_PIECES) -> list[Chunk]:
    """Each chunk cut to what the model actually reads: its first ``limit`` word pieces."""
    out = []
    for c in chunks:
        offsets = word_piece_offsets(c.text)
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
    covered = sum(span_scores([s], by_doc.get(s.doc, []))["recall"] * (s.end - s.start)
                  for s in gold)
    return covered / sum(s.end - s.start for s in gold)


# --- embedding with a cache ---------------------------------------------------------


# The cache lives in labsupport/embeddings.py (04_model_routing uses it too): vectors keyed
# by SHA-256 of (model, text), so a re-run never embeds the same chunk twice.
EmbeddingCache = embeddings.EmbeddingCache


# The seed: vectors of every text the notebook and the checker embed (the chunks of the
# chunkings they use, and the questions), committed so that a fresh clone embeds almost
# nothing. float16 halves the size; cosine to the float32 vector stays above 0.9999.
SEED_PATH = DATA_DIR / "embeddings_seed.npz"
SEED_KEY_HEX = embeddings.SEED_KEY_HEX  # the seed stores the first 128 bits of each key


def load_seed(path: Path = SEED_PATH) -> dict[str, np.ndarray]:
    """Seed vectors by key prefix, as unit-length float32 (empty if the file is missing)."""
    if not path.is_file():
        return {}
    with np.load(path) as data:
        keys = [row.tobytes().hex() for row in data["keys"]]  # (n, 16) uint8
        vecs = data["vectors"].astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)  # undo float16 rounding of the norm
    return dict(zip(keys, vecs, strict=True))


def save_seed(cache: EmbeddingCache, texts: Sequence[str], path: Path = SEED_PATH) -> int:
    """Write the vectors of ``texts`` (embedding what is missing) as the seed file."""
    texts = list(dict.fromkeys(texts))
    vecs = cache.embed(texts)
    raw = b"".join(bytes.fromhex(cache.key(t)[:SEED_KEY_HEX]) for t in texts)
    keys = np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), SEED_KEY_HEX // 2)
    np.savez_compressed(path, keys=keys, vectors=vecs.astype(np.float16))
    return len(texts)


def default_cache() -> EmbeddingCache:
    """The course's persistent cache, beside the model in the cache folder, plus the seed.

    With ``$LABSUPPORT_EMBEDDING_MODEL`` set, keys name that model and the seed (made with
    all-MiniLM-L6-v2) is not used: vectors of two models never mix.
    """
    override = os.environ.get(embeddings.ENV_MODEL)
    cache = EmbeddingCache.load(embeddings.cache_root() / "rag" / "embeddings.npz",
                                model=override or embeddings.MODEL_NAME)
    if not override:
        cache.seed = load_seed()
    return cache


# --- retrieval ----------------------------------------------------------------------


def top_k(query_vecs: np.ndarray, chunk_vecs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar chunks per query (unit vectors: cosine = dot)."""
    scores = query_vecs @ chunk_vecs.T
    k = min(k, chunk_vecs.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def chroma_collection(chunks: Sequence[Chunk], vectors: np.ndarray, name: str,
                      path: Path | None = None) -> Any:
    """Store chunks in embedded Chroma: upsert by chunk id (a re-run changes nothing) and
    delete the collection's chunks that are no longer produced (a document changed)."""
    import chromadb
    from chromadb.config import Settings

    path = path or embeddings.cache_root() / "rag" / "chroma"
    client = chromadb.PersistentClient(path=str(path),
                                       settings=Settings(anonymized_telemetry=False))
    coll = client.get_or_create_collection(
        name, embedding_function=embeddings.chroma_embedding_function(),
        metadata={"hnsw:space": "cosine"})
    stale = set(coll.get(include=[])["ids"]) - {c.id for c in chunks}
    if stale:  # chunks of an earlier version of the documents: re-indexing removes them
        coll.delete(ids=sorted(stale))
    for i in range(0, len(chunks), 500):  # Chroma limits the batch size
        part = chunks[i: i + 500]
        coll.upsert(ids=[c.id for c in part], embeddings=vectors[i: i + 500].tolist(),
                    documents=[c.text for c in part],
                    metadatas=[{"doc": c.doc, "start": c.start, "end": c.end,
                                "headings": " > ".join(c.headings)} for c in part])
    return coll


# --- metrics ------------------------------------------------------------------------


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def span_scores(gold: Sequence[Span], retrieved: Sequence[Chunk]) -> dict[str, float]:
    """Character recall, precision and IoU of retrieved chunks against gold spans."""
    covered = gold_len = 0
    for doc in {s.doc for s in gold}:
        g = _merge((s.start, s.end) for s in gold if s.doc == doc)
        r = _merge((c.start, c.end) for c in retrieved if c.doc == doc)
        gold_len += sum(b - a for a, b in g)
        covered += sum(max(0, min(b, d) - max(a, c)) for a, b in g for c, d in r)
    retrieved_len = sum(c.end - c.start for c in retrieved)  # overlap counts every time
    union = gold_len + retrieved_len - covered
    return {"recall": covered / gold_len if gold_len else 0.0,
            "precision": covered / retrieved_len if retrieved_len else 0.0,
            "iou": covered / union if union else 0.0}


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
    ranked = top_k(q_vecs, chunk_vecs, max(k, *ks))
    scores, per_q, hits = [], [], {kk: 0 for kk in ks}
    n_spans = sum(len(q.spans) for q in questions)
    for q, row in zip(questions, ranked, strict=True):
        top = [chunks[i] for i in row[:k]]
        s = {**span_scores(q.spans, top), "retrieved": float(sum(c.end - c.start for c in top))}
        scores.append(s)
        per_q.append((q, s["recall"]))
        for kk in ks:
            got = [chunks[i] for i in row[:kk]]
            hits[kk] += sum(span_scores([sp], got)["recall"] >= 0.999 for sp in q.spans)
    mean = {m: float(np.mean([s[m] for s in scores])) for m in ("recall", "precision", "iou")}
    return Evaluation(name, len(chunks), mean["recall"], mean["precision"], mean["iou"],
                      {kk: hits[kk] / n_spans for kk in ks}, per_q, scores)


# --- explore: chunk size and overlap -------------------------------------------------

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
    return chunk_handbook(docs, lambda t: recursive(t, size, overlap))


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
                                  rangemode="tozero"),
                      xaxis=dict(type="log", tickvals=list(SWEEP_SIZES)),
                      legend=dict(orientation="h", y=-0.25), margin=dict(r=70))
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


# --- query side ---------------------------------------------------------------------


def retrieve(question: str, chunks: Sequence[Chunk], chunk_vecs: np.ndarray,
             cache: EmbeddingCache, k: int = 5) -> list[tuple[Chunk, float]]:
    """Top-k chunks with their cosine similarity."""
    q = cache.embed([question])
    idx = top_k(q, chunk_vecs, k)[0]
    scores = (chunk_vecs[idx] @ q[0]).tolist()
    return [(chunks[i], s) for i, s in zip(idx, scores, strict=True)]


PROMPT_TEMPLATE = """You answer employees' questions about the Larkspur HR handbook.
Use only the sources below. Cite each fact with its source number, like [2].
If the sources do not answer the question, say so.

{sources}

Question: {question}
Answer:"""


def build_prompt(question: str, hits: Sequence[tuple[Chunk, float]]) -> str:
    """The exact text a model receives: instructions, numbered sources, the question."""
    sources = "\n\n".join(f"[{i}] {c.citation()}\n{c.text.strip()}"
                          for i, (c, _) in enumerate(hits, start=1))
    return PROMPT_TEMPLATE.format(sources=sources, question=question)


def extractive_answer(question: str, hits: Sequence[tuple[Chunk, float]],
                      cache: EmbeddingCache, n_sentences: int = 2) -> str:
    """Offline stand-in for an LLM: the sentences most similar to the question, with
    citations, in source order."""
    cands = []
    for i, (c, _) in enumerate(hits, start=1):
        for a, b in units_of(c.text):
            sentence = c.text[a:b].strip()
            if len(sentence) > 20 and not sentence.startswith("#"):
                cands.append((i, sentence))
    if not cands:
        return "The handbook sources retrieved do not answer this question."
    vecs = cache.embed([s for _, s in cands])
    q = cache.embed([question])[0]
    best = sorted(np.argsort(-(vecs @ q))[:n_sentences])
    return " ".join(f"{cands[j][1]} [{cands[j][0]}]" for j in best)


def llm_answer(prompt: str, *, base_url: str | None = None, model: str | None = None,
               timeout: float = 60.0, client: Any = None) -> str:
    """Ask an OpenAI-compatible endpoint (``$LABSUPPORT_LLM_BASE_URL``) for the answer."""
    import httpx

    base_url = base_url or os.environ.get(ENV_LLM_URL)
    if not base_url:
        raise RuntimeError(f"Set {ENV_LLM_URL} (e.g. http://127.0.0.1:11434/v1) to use a model.")
    headers = {"Authorization": f"Bearer {os.environ.get(ENV_LLM_KEY, 'none')}"}
    body = {"model": model or os.environ.get(ENV_LLM_MODEL, "gpt-4o-mini"), "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    http = client or httpx.Client(timeout=timeout)
    resp = http.post(base_url.rstrip("/") + "/chat/completions", json=body, headers=headers)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


def answer(question: str, hits: Sequence[tuple[Chunk, float]], cache: EmbeddingCache) -> str:
    """The LLM's answer when an endpoint is configured, else the extractive one."""
    if os.environ.get(ENV_LLM_URL):
        return llm_answer(build_prompt(question, hits))
    return extractive_answer(question, hits, cache)


# --- the exercise -------------------------------------------------------------------

RECALL_TARGET = 0.90  # mean character recall over the top 5, held-out questions
IOU_MARGIN = 0.02  # IoU must beat the fixed-size baseline by this much (absolute)


def starter_chunker(text: str) -> list[str]:
    """The starter: 2,000-character windows that ignore structure (and overflow MiniLM)."""
    return [text[i: i + 2000] for i in range(0, len(text), 2000)]


def learner_chunks(docs: Sequence[Document], chunker: Callable[[str], Any]) -> list[Chunk]:
    """Run a learner's chunker (strings, or (start, end) pairs) and tie chunks to sources."""
    out = []
    for d in docs:
        result = list(chunker(d.text))
        if result and all(isinstance(x, tuple | list) and len(x) == 2 for x in result):
            spans = [(int(a), int(b)) for a, b in result]
        else:
            spans = locate(d, result)
        out.extend(make_chunks(d, spans))
    return out


def _checks(answer_fn: Any, cache: EmbeddingCache | None = None) -> list[ex.Check]:
    bad = ex.expect_callable(answer_fn, "your chunker")
    if bad:
        return [bad]
    cache = cache or default_cache()
    docs, heldout = load_handbook(), load_questions("heldout")
    chunks = learner_chunks(docs, answer_fn)
    if not chunks:
        return [ex.Check("chunks produced", False, "at least one chunk per document", "0 chunks")]
    pieces = count_pieces([c.text for c in chunks])
    over = [n for n in pieces if n > MAX_TEXT_PIECES]
    base = evaluate(BASELINE, chunk_handbook(docs, CHUNKERS[BASELINE]), heldout, cache)
    mine = evaluate("yours", chunks, heldout, cache)
    worst_q, worst_r = min(mine.per_question, key=lambda x: x[1])
    longest = max(range(len(chunks)), key=pieces.__getitem__)
    # IoU example: an answer that was retrieved in full but buried in other text
    found = [i for i, s in enumerate(mine.scores) if s["recall"] >= 0.999] or range(len(mine.scores))
    noisy = min(found, key=lambda i: mine.scores[i]["iou"])
    noisy_q, noisy_s = heldout[noisy], mine.scores[noisy]
    checks = [
        ex.Check("no chunk over the model's limit", not over,
                 f"every chunk ≤ {MAX_TEXT_PIECES} word pieces (256 with [CLS] and [SEP])",
                 f"{len(over)} of {len(chunks)} chunks over, the longest {pieces[longest]} pieces "
                 f"({chunks[longest].citation()})",
                 hint="MiniLM drops everything after 256 word pieces: count with "
                      "rag.count_pieces and keep chunks smaller."),
        ex.Check("span recall@5 (held-out questions)", mine.recall >= RECALL_TARGET,
                 f"≥ {RECALL_TARGET:.2f}",
                 f"{mine.recall:.3f}; e.g. {worst_q.id} {worst_q.question!r} got "
                 f"{worst_r:.2f} of its gold characters",
                 hint="Answers live in sentences under headings: cut at headings and "
                      "sentence ends so an answer is not split across chunks."),
        ex.Check("IoU@5 above the fixed-size baseline", mine.iou >= base.iou + IOU_MARGIN,
                 f"≥ {base.iou:.3f} + {IOU_MARGIN} ({BASELINE})",
                 f"{mine.iou:.3f}; e.g. {noisy_q.id} {noisy_q.question!r}: recall "
                 f"{noisy_s['recall']:.2f} but IoU {noisy_s['iou']:.3f}, its answer buried in "
                 f"{noisy_s['retrieved']:,.0f} retrieved characters",
                 hint="Smaller, focused chunks raise IoU; overlap and huge chunks lower it."),
    ]
    return checks


def check_exercise(answer_fn: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check the learner's chunker (notebook 05): ingest the handbook with it and score
    retrieval on the held-out questions."""
    return ex.run_checks(EXERCISE_ID, _checks, answer_fn, solution_mode=solution_mode)


# --- make bench ---------------------------------------------------------------------


def langchain_baselines() -> dict[str, Callable[[str], list[tuple[int, int]]]]:
    """LangChain's RecursiveCharacterTextSplitter at its defaults (4000/200) and at 200/0.

    Uses ``langchain-text-splitters`` when installed (spans located in the source), else
    this module's :func:`recursive`, which follows the same separator hierarchy."""
    try:
        from langchain_text_splitters import RecursiveCharacterTextSplitter
    except ImportError:
        return {f"recursive {s}/{o} (LangChain emulated)": (lambda t, s=s, o=o: recursive(t, s, o))
                for s, o in ((4000, 200), (200, 0))}

    def real(size: int, overlap: int) -> Callable[[str], list[tuple[int, int]]]:
        splitter = RecursiveCharacterTextSplitter(chunk_size=size, chunk_overlap=overlap)
        return lambda t: locate(Document("doc", t), splitter.split_text(t))

    return {f"LangChain {s}/{o}": real(s, o) for s, o in ((4000, 200), (200, 0))}


def benchmark() -> dict[str, Any]:
    """Chunks embedded per second (cold cache) and the evaluation table on all questions."""
    import time

    docs, questions = load_handbook(), load_questions()
    fresh = EmbeddingCache()
    sample = chunk_handbook(docs[:3], CHUNKERS["structure 200 pieces"])
    embeddings.embed(["warm-up"])  # the first call pays for torch's one-time set-up
    started = time.perf_counter()
    fresh.embed([c.text for c in sample])
    rate = len(sample) / (time.perf_counter() - started)
    cache = default_cache()
    table = [evaluate(name, chunk_handbook(docs, fn), questions, cache).row()
             for name, fn in {**CHUNKERS, **langchain_baselines()}.items()]
    return {"chunks embedded per second": round(rate, 1),
            f"evaluation (top 5, {len(questions)} questions)": table}


# --- the seed file and the command line ---------------------------------------------


def seed_texts(docs: Sequence[Document] | None = None,
               questions: Sequence[Question] | None = None) -> list[str]:
    """Every text the notebook, the checker and the data test embed: the chunks of each
    chunking they use (the four chunkers, the emulated LangChain baselines, the sweep, the
    starter and the answer key), the questions, and the handbook's paragraphs."""
    from labsupport.solutions import rag_pipeline as answer_key

    docs = load_handbook() if docs is None else docs
    questions = load_questions() if questions is None else questions
    chunkings = [chunk_handbook(docs, fn) for fn in CHUNKERS.values()]
    chunkings += [chunk_handbook(docs, lambda t, s=s, o=o: recursive(t, s, o))
                  for s, o in ((4000, 200), (200, 0))]
    chunkings += [sweep_chunking(docs, s, o) for s, o in sweep_configs()]
    chunkings += [learner_chunks(docs, starter_chunker), learner_chunks(docs, answer_key.my_chunker)]
    texts = [c.text for chunks in chunkings for c in chunks] + [q.question for q in questions]
    texts += [d.text[a:b] for d in docs for a, b in paragraphs(d.text)]  # the data test's
    return list(dict.fromkeys(texts))


def main(argv: list[str] | None = None) -> int:
    """``python -m labsupport.rag_pipeline seed`` rebuilds the seed after a handbook edit;
    ``… ask "question"`` answers from the handbook; ``… bench`` prints :func:`benchmark`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labsupport.rag_pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("seed", help=f"rebuild {SEED_PATH.relative_to(DATA_DIR.parents[1])}")
    ask = sub.add_parser("ask", help="answer a question from the handbook")
    ask.add_argument("question")
    sub.add_parser("bench", help="embedding rate and the evaluation table")
    args = parser.parse_args(argv)
    if args.command == "seed":
        cache = default_cache()
        cache.seed = {}  # re-embed nothing stale: only this kernel's cache or the model
        n = save_seed(cache, seed_texts())
        print(f"{n} vectors ({cache.misses} newly embedded) -> {SEED_PATH} "
              f"({SEED_PATH.stat().st_size / 1e6:.1f} MB)")
    elif args.command == "ask":
        from labsupport.solutions import rag_pipeline as answer_key

        cache = default_cache()
        chunks = learner_chunks(load_handbook(), answer_key.my_chunker)
        hits = retrieve(args.question, chunks, cache.embed([c.text for c in chunks]), cache)
        print(answer(args.question, hits, cache))
    else:
        print(json.dumps(benchmark(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
