"""Benchmark of notebook 05_rag_pipeline (every chunker on both corpora), and the command
line that rebuilds the seed.

``python -m labsupport.bench.rag_pipeline seed`` rebuilds ``data/hr_policies/
embeddings_seed.npz`` after a handbook edit; ``… ask "question"`` answers from the
handbook; ``… bench`` prints :func:`benchmark` (``make bench`` calls ``benchmark()``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import embeddings
from labsupport import rag_pipeline as rag
from labsupport.checks import rag_pipeline as checks
from labsupport.explore import rag_pipeline as explore


def table_chunkers() -> dict[str, Any]:
    """Every chunker of the table: the baselines, LangChain's, the starter, the answer key."""
    from labsupport.solutions import rag_pipeline as answer_key

    return {**explore.CHUNKERS, **explore.langchain_baselines(),
            "starter: 2,000 characters": checks.starter_chunker,
            f"answer key: sections, sentences packed to {answer_key.MAX_PIECES}":
                answer_key.my_chunker}


def _spans_of(chunker: Any) -> Any:
    """A chunker that may return strings (the starter), as one that returns spans."""
    def spans(text: str) -> list[tuple[int, int]]:
        out = list(chunker(text))
        return explore.locate(rag.Document("doc", text), out) if out and isinstance(
            out[0], str) else out
    return spans


def benchmark() -> dict[str, Any]:
    """Chunks embedded per second (cold cache), and every chunker on both corpora."""
    import time

    docs = rag.load_handbook()
    fresh = rag.EmbeddingCache()
    sample = rag.chunk_handbook(docs[:3], rag.paragraphs)
    embeddings.embed(["warm-up"])  # the first call pays for torch's one-time set-up
    started = time.perf_counter()
    fresh.embed([c.text for c in sample])
    rate = len(sample) / (time.perf_counter() - started)
    cache = rag.default_cache()
    table = explore.compare_chunkers({n: _spans_of(f) for n, f in table_chunkers().items()},
                                     cache)
    return {"chunks embedded per second": round(rate, 1),
            "every chunker, both corpora (held-out questions, top 5)":
                [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
                 for row in table]}


# --- the seed file and the command line ---------------------------------------------


def seed_texts() -> list[str]:
    """Every text the notebook, the checker and the data test embed: on both corpora, the
    chunks of every chunker of the table and the questions; on the handbook, the sweep's
    chunks and the dilution measurement's chunks."""
    texts: list[str] = []
    for corpus in explore.CORPORA:
        docs, _ = explore.load_corpus(corpus)
        data_dir, _ = explore.CORPORA[corpus]
        for chunker in table_chunkers().values():
            texts += [c.text for c in rag.chunk_handbook(docs, _spans_of(chunker))]
        texts += [q.question for q in explore.load_questions(None, data_dir)]
    docs, heldout = explore.load_corpus("handbook")
    for size, overlap in explore.sweep_configs():
        texts += [c.text for c in explore.sweep_chunking(docs, size, overlap)]
    by_name = {d.name: d for d in docs}
    for q in heldout:
        for n in explore.DILUTION_LENGTHS:
            texts += list(explore.dilution_texts(q, by_name[q.spans[0].doc], n) or ())
    return list(dict.fromkeys(texts))


def save_seed(cache: rag.EmbeddingCache, texts: Sequence[str],
              path: Path = rag.SEED_PATH) -> int:
    """Write the vectors of ``texts`` (embedding what is missing) as the seed file."""
    texts = list(dict.fromkeys(texts))
    vecs = cache.embed(texts)
    raw = b"".join(bytes.fromhex(cache.key(t)[:rag.SEED_KEY_HEX]) for t in texts)
    keys = np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), rag.SEED_KEY_HEX // 2)
    np.savez_compressed(path, keys=keys, vectors=vecs.astype(np.float16))
    return len(texts)


def main(argv: list[str] | None = None) -> int:
    """``seed`` rebuilds the seed after a handbook edit; ``ask "question"`` answers from the
    handbook; ``bench`` prints :func:`benchmark`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m labsupport.bench.rag_pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("seed", help=f"rebuild {rag.SEED_PATH.relative_to(rag.DATA_DIR.parents[1])}")
    ask = sub.add_parser("ask", help="answer a question from the handbook")
    ask.add_argument("question")
    sub.add_parser("bench", help="embedding rate and the evaluation table")
    args = parser.parse_args(argv)
    if args.command == "seed":
        cache = rag.default_cache()
        cache.seed = {}  # re-embed nothing stale: only this kernel's cache or the model
        n = save_seed(cache, seed_texts())
        print(f"{n} vectors ({cache.misses} newly embedded) -> {rag.SEED_PATH} "
              f"({rag.SEED_PATH.stat().st_size / 1e6:.1f} MB)")
    elif args.command == "ask":
        from labsupport.solutions import rag_pipeline as answer_key

        cache = rag.default_cache()
        chunks = rag.chunk_handbook(rag.load_handbook(), answer_key.my_chunker)
        hits = rag.retrieve(args.question, chunks, cache.embed([c.text for c in chunks]), cache)
        print(rag.answer(args.question, hits, cache))
    else:
        print(json.dumps(benchmark(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
