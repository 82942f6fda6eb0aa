"""Benchmark of notebook 05_rag_pipeline, and the command line that rebuilds the seed.

``python -m labsupport.bench.rag_pipeline seed`` rebuilds ``data/hr_policies/
embeddings_seed.npz`` after a handbook edit; ``… ask "question"`` answers from the
handbook; ``… bench`` prints :func:`benchmark` (``make bench`` calls ``benchmark()``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import embeddings
from labsupport import rag_pipeline as rag
from labsupport.checks import rag_pipeline as checks
from labsupport.explore import rag_pipeline as explore


def benchmark() -> dict[str, Any]:
    """Chunks embedded per second (cold cache) and the evaluation table on all questions."""
    import time

    docs, questions = rag.load_handbook(), explore.load_questions()
    fresh = rag.EmbeddingCache()
    sample = rag.chunk_handbook(docs[:3], explore.CHUNKERS["structure 200 pieces"])
    embeddings.embed(["warm-up"])  # the first call pays for torch's one-time set-up
    started = time.perf_counter()
    fresh.embed([c.text for c in sample])
    rate = len(sample) / (time.perf_counter() - started)
    cache = rag.default_cache()
    table = [explore.evaluate(name, rag.chunk_handbook(docs, fn), questions, cache).row()
             for name, fn in {**explore.CHUNKERS, **explore.langchain_baselines()}.items()]
    return {"chunks embedded per second": round(rate, 1),
            f"evaluation (top 5, {len(questions)} questions)": table}


# --- the seed file and the command line ---------------------------------------------

_PARAGRAPH = re.compile(r"[^\n](?:.|\n(?!\n))*")  # a run of lines up to a blank line


def paragraphs(text: str) -> list[tuple[int, int]]:
    """Spans of the paragraphs of ``text`` (blocks between blank lines; a list or a table is
    one block), headings left out. The data test embeds them."""
    return [(m.start(), m.end()) for m in _PARAGRAPH.finditer(text)
            if not m.group().startswith("#")]


def seed_texts(docs: Sequence[rag.Document] | None = None,
               questions: Sequence[explore.Question] | None = None) -> list[str]:
    """Every text the notebook, the checker and the data test embed: the chunks of each
    chunking they use (the four chunkers, the emulated LangChain baselines, the sweep, the
    starter and the answer key), the questions, and the handbook's paragraphs."""
    from labsupport.solutions import rag_pipeline as answer_key

    docs = rag.load_handbook() if docs is None else docs
    questions = explore.load_questions() if questions is None else questions
    chunkings = [rag.chunk_handbook(docs, fn) for fn in explore.CHUNKERS.values()]
    chunkings += [rag.chunk_handbook(docs, lambda t, s=s, o=o: rag.recursive(t, s, o))
                  for s, o in ((4000, 200), (200, 0))]
    chunkings += [explore.sweep_chunking(docs, s, o) for s, o in explore.sweep_configs()]
    chunkings += [checks.learner_chunks(docs, checks.starter_chunker),
                  checks.learner_chunks(docs, answer_key.my_chunker)]
    texts = [c.text for chunks in chunkings for c in chunks] + [q.question for q in questions]
    texts += [d.text[a:b] for d in docs for a, b in paragraphs(d.text)]  # the data test's
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
        chunks = checks.learner_chunks(rag.load_handbook(), answer_key.my_chunker)
        hits = rag.retrieve(args.question, chunks, cache.embed([c.text for c in chunks]), cache)
        print(rag.answer(args.question, hits, cache))
    else:
        print(json.dumps(benchmark(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
