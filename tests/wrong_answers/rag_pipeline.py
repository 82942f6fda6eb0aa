"""Wrong answers to notebook 05's steps, its scenario exercise ("the HR assistant gives
incomplete answers") and its quiz.

Each scenario builder returns a chunker ``my_chunker(text)`` a learner could plausibly write:
strings that are verbatim pieces of ``text``, or ``(start, end)`` offsets. The checker ingests
the handbook and the tech docs with it and must tell every one "not yet", with the named row
failing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from labsupport import rag_pipeline as rag
from labsupport.checks import rag_pipeline as checks
from labsupport.explore import rag_pipeline as explore
from labsupport.solutions import rag_pipeline as key

from . import Exercise, WrongAnswer, step

Chunker = Callable[[str], list[Any]]


def starter() -> Chunker:
    """The notebook's untouched starter cell."""

    def my_chunker(text: str) -> list[str]:
        """Split one policy into chunks: verbatim strings or (start, end) offsets."""
        return [text[i: i + 2000] for i in range(0, len(text), 2000)]

    return my_chunker


def no_overlap_step(text, size, overlap):
    """Ignores the overlap: steps a whole window."""
    return key.fixed_chunks(text, size, 0)


def one_window_too_many(text, size, overlap):
    """Keeps stepping after the window that reached the end."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("bad settings")
    return [(s, min(s + size, len(text))) for s in range(0, len(text), size - overlap)]


def precision_counts_overlap_once(gold, retrieved):
    """Counts the retrieved characters as a set: overlapping chunks count once."""
    scores = key.span_scores(gold, retrieved)
    got = {(c.doc, i) for c in retrieved for i in range(c.start, c.end)}
    covered = scores["recall"] * len({(s.doc, i) for s in gold for i in range(s.start, s.end)})
    return {**scores, "precision": covered / len(got) if got else 0.0}


def gold_not_merged(gold, retrieved):
    """Adds up gold span lengths without merging overlaps."""
    gold_len = sum(s.end - s.start for s in gold)
    covered = sum(max(0, min(s.end, c.end) - max(s.start, c.start))
                  for s in gold for c in retrieved if c.doc == s.doc)
    got = sum(c.end - c.start for c in retrieved)
    union = gold_len + got - covered
    return {"recall": covered / gold_len, "precision": covered / got if got else 0.0,
            "iou": covered / union if union else 0.0}


def split_at_every_hash(text):
    """Splits at every line starting with '#', code comments included."""
    cuts = [0] + [m.start() for m in re.finditer(r"^#", text, re.M) if m.start()] + [len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


def split_at_level_four_too(text):
    """Fence-aware, but a level-4 heading starts a section too."""
    cuts, offset, fenced = [0], 0, False
    for line in text.splitlines(keepends=True):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,4}[ \t]+\S", line) and offset > 0:
            cuts.append(offset)
        offset += len(line)
    cuts.append(len(text))
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


def sentence_per_chunk(text, max_pieces):
    """One unit a chunk: within budget, never packed."""
    return rag.units_of(text)


def character_budget(text, max_pieces):
    """Packs by characters (4 per word piece, a rule of thumb), not by word pieces."""
    return explore.recursive(text, 4 * max_pieces, 0)


def cut_at_visible_gold() -> Chunker:
    """Chunks cut exactly at the gold spans of the questions the notebook shows (the tuning
    split), 128-piece windows elsewhere: a lookup of the labels, not a chunking rule."""
    gold: dict[str, list[tuple[int, int]]] = {}
    for q in explore.load_questions("tuning"):
        for s in q.spans:
            gold.setdefault(s.doc, []).append((s.start, s.end))
    by_text = {d.text: d.name for d in rag.load_handbook()}

    def my_chunker(text: str) -> list[tuple[int, int]]:
        spans = gold.get(by_text.get(text, ""), [])
        cuts = sorted({0, len(text), *(x for ab in spans for x in ab)})
        out = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            out.extend((a + x, a + y) for x, y in rag.fixed_tokens(text[a:b], 128)
                       if text[a + x:a + y].strip())
        return out

    return my_chunker


def _strip_markdown(text: str) -> list[str]:
    """'Cleans' each paragraph of its Markdown: the chunks are no longer the source's text."""
    return [p.replace("#", "").strip() for p in text.split("\n\n") if p.strip()]


EXERCISES = [
    step(checks, 1, lambda: key.fixed_chunks, [
        WrongAnswer("ignores the overlap", "windows step a whole size", lambda: no_overlap_step,
                    "overlap 100"),
        WrongAnswer("a window too many", "a window after the one that reached the end",
                    lambda: one_window_too_many, "overlap 100"),
    ]),
    step(checks, 2, lambda: key.span_scores, [
        WrongAnswer("overlap counted once", "two overlapping chunks cost their characters "
                    "twice in the prompt", lambda: precision_counts_overlap_once,
                    "overlap counts twice"),
        WrongAnswer("gold not merged", "overlapping gold spans counted twice",
                    lambda: gold_not_merged, "counted once"),
    ]),
    step(checks, 3, lambda: key.heading_split, [
        WrongAnswer("every '#' line", "a comment in a code block starts a section",
                    lambda: split_at_every_hash, "code fences"),
        WrongAnswer("level 4 too", "#### starts a section", lambda: split_at_level_four_too,
                    "code fences"),
    ]),
    step(checks, 4, lambda: key.pack_sentences, [
        WrongAnswer("a sentence a chunk", "never packed: hundreds of tiny chunks",
                    lambda: sentence_per_chunk, "packed"),
        WrongAnswer("characters, not word pieces", "4 characters a piece is a guess: chunks "
                    "go over the budget or cut sentences", lambda: character_budget,
                    "budget 40 word pieces"),
    ]),
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: key.my_chunker,
        gallery=[
            WrongAnswer("starter", "2,000-character windows: about 400 word pieces, so MiniLM "
                        "never reads the second half of each chunk", starter, "no chunk over"),
            WrongAnswer("one chunk per document", "one vector per policy blends every topic "
                        "and MiniLM reads only its first 254 word pieces",
                        lambda: lambda text: [text], "no chunk over"),
            WrongAnswer("one chunk per section", "sections run to hundreds of word pieces: "
                        "over what MiniLM was trained on, some truncated",
                        lambda: rag.heading_sections, "no chunk over"),
            WrongAnswer("fixed 500 characters, overlap 100", "the common default: cuts "
                        "through answers and repeats 100 characters, so the top 5 carry "
                        "much unrelated text", lambda: explore.CHUNKERS[
                            "fixed 500 chars, overlap 100"], "handbook: IoU"),
            WrongAnswer("fixed 128 tokens", "fits the model but cuts through answers: the "
                        "baseline itself", lambda: explore.CHUNKERS["fixed 128 tokens"],
                        "handbook: IoU"),
            WrongAnswer("one sentence per chunk", "a rule, its exception and its heading end "
                        "up in different chunks, so the top 5 miss part of the answer",
                        lambda: explore.CHUNKERS["one sentence per chunk"],
                        "handbook: span recall@5"),
            WrongAnswer("one chunk per paragraph", "blank lines make good cuts, but a long "
                        "table or list is one paragraph, over 128 word pieces",
                        lambda: lambda text: [p for p in text.split("\n\n") if p.strip()],
                        "no chunk over"),
            WrongAnswer("paragraphs", "blank lines make good cuts, but long lists and tables "
                        "are one paragraph: 8 handbook chunks over 128 word pieces, and 7 tech-"
                        "docs chunks MiniLM truncates", lambda: rag.paragraphs,
                        "handbook: no chunk over"),
            WrongAnswer("cut at the visible questions' gold", "fits the labels of the "
                        "questions it was shown, not the documents: the tech docs have no "
                        "such labels", cut_at_visible_gold, "tech docs: IoU"),
            WrongAnswer("Markdown stripped", "rewritten chunks cannot be traced to a span of "
                        "the source, so nothing can be cited or scored",
                        lambda: _strip_markdown, "your code runs"),
            WrongAnswer("nothing", "no chunks: nothing to retrieve",
                        lambda: lambda text: [], "chunks produced"),
        ],
    ),
    Exercise(
        id=f"{checks.EXERCISE_ID}/quiz", check=lambda a: checks.check_quiz(a),
        answer_key=lambda: key.QUIZ_ANSWERS,
        gallery=[
            WrongAnswer("truncation is an error", "believes MiniLM refuses long inputs",
                        lambda: {**key.QUIZ_ANSWERS, "truncation": 2}, "truncation"),
            WrongAnswer("IoU as recall", "answers 1.0: the span is retrieved in full",
                        lambda: {**key.QUIZ_ANSWERS, "iou": 1.0}, "iou"),
        ],
    ),
]
