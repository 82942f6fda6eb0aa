"""RAG pipeline: chunk, embed, store, retrieve, answer, and score retrieval. Serves
``notebooks/05_rag_pipeline.ipynb``.

Ingestion: a chunker cuts each handbook document into :class:`Chunk` objects (document,
character span, heading path); chunks are embedded with all-MiniLM-L6-v2 through an
:class:`EmbeddingCache` keyed by a hash of the text (a re-run embeds nothing again) and
stored in embedded Chroma. Query: embed the question, take the top-k chunks, build the
prompt, answer extractively (offline) or through an OpenAI-compatible endpoint. Scores:
character-span recall, precision and IoU of the top-k chunks against gold answer spans,
after Chroma's report "Evaluating Chunking Strategies for Retrieval" (2024). The gold questions,
the evaluation and the figures are in ``labsupport.explore.rag_pipeline``, the checker in checks.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import embeddings

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "hr_policies"
TECH_DOCS_DIR = DATA_DIR.parent / "tech_docs"  # the second, held-out corpus
# all-MiniLM-L6-v2 reads at most 256 word pieces, [CLS] and [SEP] included: 254 of text.
MAX_TEXT_PIECES = embeddings.MAX_SEQ_LENGTH - 2
# ...but it was fine-tuned on inputs cut at 128 word pieces (its model card, "Training").
TRAINED_PIECES = 128
ENV_LLM_URL = "LABSUPPORT_LLM_BASE_URL"  # e.g. http://127.0.0.1:11434/v1 (Ollama, vLLM, …)
ENV_LLM_MODEL = "LABSUPPORT_LLM_MODEL"
ENV_LLM_KEY = "LABSUPPORT_LLM_API_KEY"


# --- documents and chunks -----------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One policy of the handbook."""

    name: str  # file name, e.g. "02_annual_leave.md"
    text: str


def load_handbook(data_dir: Path = DATA_DIR, folder: str = "handbook") -> list[Document]:
    """The Markdown documents of ``data_dir/folder`` (the handbook's), in file order."""
    return [Document(p.name, p.read_text(encoding="utf-8"))
            for p in sorted((data_dir / folder).glob("*.md"))]


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


_HEADING = re.compile(r"(#{1,6})[ \t]+(.+?)[ \t]*$")
_FENCE = ("```", "~~~")  # a line starting with one opens or closes a code block


def headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of each Markdown heading, in order. A ``#`` line inside a
    fenced code block (a shell comment, say) is not a heading."""
    out, offset, fenced = [], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith(_FENCE):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line.rstrip("\n"))):
            out.append((offset, len(m.group(1)), m.group(2)))
        offset += len(line)
    return out


def heading_index(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """(offset, heading path) at each Markdown heading, in order."""
    out: list[tuple[int, tuple[str, ...]]] = []
    path: list[str] = []
    for offset, level, title in headings(text):
        path = [*path[: level - 1], title]
        out.append((offset, tuple(path)))
    return out


def headings_at(index: list[tuple[int, tuple[str, ...]]], offset: int) -> tuple[str, ...]:
    """The heading path in force at ``offset``."""
    i = bisect.bisect_right([o for o, _ in index], offset) - 1
    return index[i][1] if i >= 0 else ()


def make_chunks(doc: Document, spans: Iterable[tuple[int, int]]) -> list[Chunk]:
    """Chunks from character spans; spans of whitespace only are dropped."""
    index = heading_index(doc.text)
    return [Chunk(doc.name, a, b, doc.text[a:b], headings_at(index, a))
            for a, b in spans if doc.text[a:b].strip()]


# --- chunkers: each maps a document's text to character spans -----------------------


def strip_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans without leading and trailing whitespace; empty ones dropped."""
    cut = [(b - len(text[a:b].lstrip()), a + len(text[a:b].rstrip())) for a, b in spans]
    return [(a, b) for a, b in cut if b > a]


def fixed_chars(text: Sequence[Any], size: int = 800, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of ``size`` characters, each starting ``size - overlap`` after the last."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need size > 0 and 0 <= overlap < size")
    out = []
    for start in range(0, len(text), size - overlap):
        out.append((start, min(start + size, len(text))))
        if start + size >= len(text):
            break
    return out


def _tokenize(texts: str | list[str], **options: Any) -> Any:
    with warnings.catch_warnings():  # "sequence longer than 512": we only count or locate
        warnings.simplefilter("ignore")
        return embeddings.get_model().tokenizer(texts, add_special_tokens=False, verbose=False,
                                                **options)


def word_piece_offsets(text: str) -> list[tuple[int, int]]:
    """Character span of every word piece of ``text`` under the MiniLM tokenizer."""
    return [tuple(o) for o in _tokenize(text, return_offsets_mapping=True)["offset_mapping"]]


def count_pieces(texts: Sequence[str]) -> list[int]:
    """Word pieces per text (no special tokens), in one tokenizer call."""
    return [len(x) for x in _tokenize(list(texts))["input_ids"]] if texts else []


def fixed_tokens(text: str, size: int = 200, overlap: int = 0) -> list[tuple[int, int]]:
    """Windows of ``size`` word pieces (MiniLM tokenizer), stepping ``size - overlap``."""
    offsets = word_piece_offsets(text)  # the windows of fixed_chars, over word pieces
    return [(offsets[a][0], offsets[b - 1][1]) for a, b in fixed_chars(offsets, size, overlap)]


_SENTENCE_END = re.compile(r"(?<=[.!?:;])[ \t]+(?=\S)|\n+")


def units_of(text: str) -> list[tuple[int, int]]:
    """Sentences and lines (list items, table rows) of ``text`` as contiguous spans."""
    cuts = [0] + [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def heading_sections(text: str, max_level: int = 3) -> list[tuple[int, int]]:
    """One span per section: cut before every heading of level 1 to ``max_level``."""
    cuts = [o for o, level, _ in headings(text) if level <= max_level and o > 0]
    bounds = [0, *cuts, len(text)]
    return strip_spans(text, zip(bounds, bounds[1:], strict=False))


def pack_units(text: str, max_pieces: int) -> list[tuple[int, int]]:
    """Whole sentences and lines (:func:`units_of`) packed in order while a chunk stays
    within ``max_pieces`` word pieces; one that alone is longer is cut by word pieces."""
    units = units_of(text)
    sizes = count_pieces([text[a:b] for a, b in units])
    out: list[tuple[int, int]] = []
    start = end = used = 0  # the chunk being packed: text[start:end], `used` word pieces
    for (a, b), n in zip(units, sizes, strict=True):
        if used and used + n > max_pieces:
            out.append((start, end))
            used = 0
        if n > max_pieces:  # one huge sentence (a long table row, code): cut it
            out.extend((a + x, a + y) for x, y in fixed_tokens(text[a:b], max_pieces))
            continue
        start, end, used = (start if used else a), b, used + n
    if used:
        out.append((start, end))
    return strip_spans(text, out)


_PARAGRAPH = re.compile(r"[^\n](?:.|\n(?!\n))*")  # a run of lines up to a blank line


def paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of the paragraphs of ``text`` (blocks between blank lines; a list, a table or
    a code block without blank lines is one block), blocks that start with a heading left out."""
    heading_starts = {offset for offset, _, _ in headings(text)}  # not a '#' inside code
    return [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)
            if m.start() not in heading_starts]


def chunk_handbook(docs: Sequence[Document],
                   chunker: Callable[[str], list[tuple[int, int]]]) -> list[Chunk]:
    """Apply a span chunker to every document."""
    return [c for d in docs for c in make_chunks(d, chunker(d.text))]


# --- embed with a cache, store in Chroma --------------------------------------------

# Vectors keyed by SHA-256 of (model, text): a re-run never embeds the same chunk twice.
EmbeddingCache = embeddings.EmbeddingCache  # in labsupport/embeddings.py (04 uses it too)
# The seed: float16 vectors of all the notebook and the checker embed, committed so that a
# fresh clone embeds almost nothing (`python -m labsupport.bench.rag_pipeline seed` rebuilds it).
SEED_PATH = DATA_DIR / "embeddings_seed.npz"
SEED_KEY_HEX = embeddings.SEED_KEY_HEX  # the seed stores the first 128 bits of each key


def load_seed(path: Path = SEED_PATH) -> dict[str, np.ndarray]:
    """Seed vectors by key prefix, as unit-length float32 (empty if the file is missing)."""
    if not path.is_file():
        return {}
    with np.load(path) as data:
        keys = [row.tobytes().hex() for row in data["keys"]]  # (n, 16) uint8
        vecs = data["vectors"].astype(np.float32)
    return dict(zip(keys, vecs / np.linalg.norm(vecs, axis=1, keepdims=True), strict=True))


def default_cache() -> EmbeddingCache:
    """The course's persistent cache (in the cache folder) plus the seed. With
    ``$LABSUPPORT_EMBEDDING_MODEL`` set, keys name that model and the seed (made with
    all-MiniLM-L6-v2) is not used: vectors of two models never mix."""
    override = os.environ.get(embeddings.ENV_MODEL)
    return EmbeddingCache.load(embeddings.derived_cache_root() / "rag" / "embeddings.npz",
                               model=override or embeddings.MODEL_NAME,
                               seed={} if override else load_seed())


def chroma_collection(chunks: Sequence[Chunk], vectors: np.ndarray, name: str,
                      path: Path | None = None) -> Any:
    """Store chunks in embedded Chroma: upsert by chunk id (a re-run changes nothing) and
    delete the collection's chunks that are no longer produced (a document changed)."""
    import chromadb
    from chromadb.config import Settings

    path = path or embeddings.derived_cache_root() / "rag" / "chroma"
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


# --- query: retrieve, prompt, answer ------------------------------------------------


def top_k(query_vecs: np.ndarray, chunk_vecs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar chunks per query (unit vectors: cosine = dot)."""
    scores = query_vecs @ chunk_vecs.T
    k = min(k, chunk_vecs.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


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
    """Offline stand-in for an LLM: the retrieved sentences closest to the question, cited."""
    cands = [(i, c.text[a:b].strip()) for i, (c, _) in enumerate(hits, start=1)
             for a, b in units_of(c.text)]
    cands = [(i, s) for i, s in cands if len(s) > 20 and not s.startswith("#")]
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
    resp = (client or httpx.Client(timeout=timeout)).post(
        base_url.rstrip("/") + "/chat/completions", json=body, headers=headers)
    resp.raise_for_status()
    return resp.json()["choices"][0]["message"]["content"]


def answer(question: str, hits: Sequence[tuple[Chunk, float]], cache: EmbeddingCache) -> str:
    """The LLM's answer when an endpoint is configured, else the extractive one."""
    if os.environ.get(ENV_LLM_URL):
        return llm_answer(build_prompt(question, hits))
    return extractive_answer(question, hits, cache)


# --- span metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    doc: str
    start: int  # character offsets into Document.text, end exclusive
    end: int


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
