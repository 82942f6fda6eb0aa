"""Checker of notebook 05_rag_pipeline's exercise: the learner's chunker ingests the whole
handbook and retrieval is scored on the held-out questions, against fixed references (the
model's word-piece limit, a recall target and the fixed-size baseline's IoU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labsupport import exercises as ex
from labsupport import rag_pipeline as rag
from labsupport.checks import rag_pipeline_steps as steps
from labsupport.explore import rag_pipeline as explore

EXERCISE_ID = "05_rag_pipeline"
RECALL_TARGET = 0.90  # mean character recall over the top 5, held-out questions
IOU_MARGIN = 0.02  # IoU must beat the fixed-size baseline by this much (absolute)
BASELINE = "fixed 200 tokens"  # the course's fixed-size baseline (explore.CHUNKERS)


def starter_chunker(text: str) -> list[str]:
    """The starter: 2,000-character windows that ignore structure (and overflow MiniLM)."""
    return [text[i: i + 2000] for i in range(0, len(text), 2000)]


def learner_chunks(docs: Sequence[rag.Document],
                   chunker: Callable[[str], Any]) -> list[rag.Chunk]:
    """Run a learner's chunker (strings, or (start, end) pairs) and tie chunks to sources."""
    out = []
    for i, d in enumerate(docs):
        with ex.on_input(f"the policy {d.name!r} ({len(d.text):,} characters)",
                         reproduce=f"my_chunker(rag.load_handbook()[{i}].text)"):
            result = list(chunker(d.text))
        if result and all(isinstance(x, tuple | list) and len(x) == 2 for x in result):
            spans = [(int(a), int(b)) for a, b in result]
        else:
            spans = explore.locate(d, result)
        out.extend(rag.make_chunks(d, spans))
    return out


def _checks(answer_fn: Any, cache: rag.EmbeddingCache | None = None) -> list[ex.Check]:
    bad = ex.expect_callable(answer_fn, "your chunker")
    if bad:
        return [bad]
    cache = cache or rag.default_cache()
    docs, heldout = rag.load_handbook(), explore.load_questions("heldout")
    chunks = learner_chunks(docs, answer_fn)
    if not chunks:
        return [ex.Check("chunks produced", False, "at least one chunk per document", "0 chunks")]
    pieces = rag.count_pieces([c.text for c in chunks])
    over = [n for n in pieces if n > rag.MAX_TEXT_PIECES]
    baseline_chunks = rag.chunk_handbook(docs, explore.CHUNKERS[BASELINE])
    base = explore.evaluate(BASELINE, baseline_chunks, heldout, cache)
    mine = explore.evaluate("yours", chunks, heldout, cache)
    worst_q, worst_r = min(mine.per_question, key=lambda x: x[1])
    longest = max(range(len(chunks)), key=pieces.__getitem__)
    # IoU example: an answer that was retrieved in full but buried in other text
    found = ([i for i, s in enumerate(mine.scores) if s["recall"] >= 0.999]
             or range(len(mine.scores)))
    noisy = min(found, key=lambda i: mine.scores[i]["iou"])
    noisy_q, noisy_s = heldout[noisy], mine.scores[noisy]
    checks = [
        ex.Check("no chunk over the model's limit", not over,
                 f"every chunk ≤ {rag.MAX_TEXT_PIECES} word pieces (256 with [CLS] and [SEP])",
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


# --- the steps ---------------------------------------------------------------------------------

STEP_CHECKS = {1: steps.step_1_checks, 2: steps.step_2_checks, 3: steps.step_3_checks,
               4: steps.step_4_checks}


def check_step(n: int, answer: Any, *, solution_mode: bool = False) -> ex.CheckResult:
    """Check "Your turn" step ``n`` (1: fixed-size spans, 2: span metrics, 3: heading
    split, 4: sentences packed under a word-piece budget)."""
    return ex.run_checks(ex.step_id(EXERCISE_ID, n), STEP_CHECKS[n], answer,
                         solution_mode=solution_mode)
