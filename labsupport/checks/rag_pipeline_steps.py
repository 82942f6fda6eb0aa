"""The four "Your turn" step checks of ``05_rag_pipeline.ipynb``.

Each runs the learner's code on text it never shows and compares with an independent
reference written here (not the module's function the notebook uses next):

1. a fixed-size chunker that returns character spans (windows, overlap, the last window);
2. span recall, precision and IoU over characters (Chroma's "Evaluating Chunking
   Strategies for Retrieval"), on named cases and 300 random ones;
3. a heading-aware split: sections at Markdown headings of level 1 to 3, never at a ``#``
   inside a fenced code block;
4. packing whole sentences under a word-piece budget: no chunk over it (unless one sentence
   alone is), nothing lost, and no two neighbours that would fit together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from labsupport import exercises as ex
from labsupport import rag_pipeline as rag

SEED = 505


def _spans(result: Any, what: str) -> list[tuple[int, int]]:
    """The learner's result as (start, end) int pairs; TypeError naming what is wrong."""
    if not isinstance(result, list | tuple):
        raise TypeError(f"{what} returned {type(result).__name__}, not a list of (start, end)")
    out = []
    for item in result:
        if not (isinstance(item, list | tuple) and len(item) == 2
                and all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in item)):
            raise TypeError(f"{what} returned {item!r:.40} among its spans, not (start, end)")
        out.append((int(item[0]), int(item[1])))
    return out


# --- Step 1: fixed-size windows ------------------------------------------------------------

def _windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Reference: starts at 0, size - overlap, ...; the last window ends at n."""
    out, start = [], 0
    while start < n:
        out.append((start, min(start + size, n)))
        if start + size >= n:
            break
        start += size - overlap
    return out


def _step_1_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED)
    words = "the leave year runs from 1 January, and carried-over days expire on 31 March".split()
    cases = [(int(rng.integers(900, 3000)), 300, 0), (1200, 300, 0), (1250, 400, 100),
             (250, 400, 50), (0, 100, 10), (int(rng.integers(2000, 5000)), 500, 100)]
    for n, size, overlap in cases:
        text = " ".join(rng.choice(words, n))[:n] if n else ""
        got = _spans(fn(text, size, overlap), "your chunker")
        want = _windows(len(text), size, overlap)
        yield ex.Check(f"{len(text):,} characters, size {size}, overlap {overlap}", got == want,
                       f"{len(want)} windows: {want[:2]}{'…' if len(want) > 2 else ''}",
                       f"{len(got)} windows: {got[:2]}{'…' if len(got) > 2 else ''}",
                       hint="Start at 0 and step size - overlap; each window is (start, "
                            "min(start + size, len(text))); stop after the window that "
                            "reaches the end. An empty text has no windows.")
    bad = []
    for size, overlap in ((0, 0), (100, 100), (100, -1), (100, 150)):
        try:
            fn("some text", size, overlap)
            bad.append(f"size {size}, overlap {overlap}: accepted")
        except ValueError:
            pass
    yield ex.Check("impossible settings are refused", not bad,
                   "ValueError for size 0, overlap = size, a negative overlap, overlap > size",
                   "; ".join(bad) or "all refused", hint="Raise ValueError unless size > 0 "
                   "and 0 <= overlap < size: otherwise the loop never moves forward.")


def step_1_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your fixed-size chunker"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _step_1_rows(fn), "your chunker runs",
                                 f"random texts of seed {SEED}")


# --- Step 2: span recall, precision and IoU --------------------------------------------------

def _reference_scores(gold: list[rag.Span], got: list[rag.Chunk]) -> dict[str, float]:
    """Character sets, brute force: the gold characters, and every retrieved character
    counted once per chunk that holds it."""
    gold_chars = {(s.doc, i) for s in gold for i in range(s.start, s.end)}
    retrieved = sum(c.end - c.start for c in got)
    covered = len(gold_chars & {(c.doc, i) for c in got for i in range(c.start, c.end)})
    union = len(gold_chars) + retrieved - covered
    return {"recall": covered / len(gold_chars) if gold_chars else 0.0,
            "precision": covered / retrieved if retrieved else 0.0,
            "iou": covered / union if union else 0.0}


def _chunk(doc: str, a: int, b: int) -> rag.Chunk:
    return rag.Chunk(doc, a, b, "x" * (b - a))


def _score_cases(rng: np.random.Generator) -> list[tuple[str, list[rag.Span], list[rag.Chunk]]]:
    g = [rag.Span("a.md", 100, 200)]
    cases = [
        ("a chunk exactly on the gold span", g, [_chunk("a.md", 100, 200)]),
        ("the gold span inside a larger chunk", g, [_chunk("a.md", 50, 450)]),
        ("half the gold span", g, [_chunk("a.md", 150, 300)]),
        ("two overlapping chunks: overlap counts twice in precision", g,
         [_chunk("a.md", 80, 180), _chunk("a.md", 120, 220)]),
        ("two gold spans that overlap are counted once",
         [rag.Span("a.md", 100, 200), rag.Span("a.md", 150, 260)], [_chunk("a.md", 90, 210)]),
        ("the right offsets in another document", g, [_chunk("b.md", 100, 200)]),
        ("gold in two documents", [rag.Span("a.md", 0, 50), rag.Span("b.md", 10, 30)],
         [_chunk("b.md", 0, 40)]),
        ("nothing retrieved", g, []),
    ]
    for n in range(300):
        docs = ["a.md", "b.md"]
        gold = [rag.Span(str(rng.choice(docs)), int(a), int(a + rng.integers(5, 80)))
                for a in rng.integers(0, 500, int(rng.integers(1, 4)))]
        got = [_chunk(str(rng.choice(docs)), int(a), int(a + rng.integers(1, 200)))
               for a in rng.integers(0, 500, int(rng.integers(0, 6)))]
        cases.append((f"random case {n}", gold, got))
    return cases


def _step_2_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED + 2)
    worst, example = 0.0, ""
    for name, gold, got in _score_cases(rng):
        mine = fn(list(gold), list(got))
        if not isinstance(mine, dict):
            raise TypeError(f"returned {type(mine).__name__}, not a dict")
        want = _reference_scores(gold, got)
        diff = max(abs(ex.as_number(mine.get(m), m) - want[m]) for m in want)
        if not name.startswith("random"):
            yield ex.Check(name, diff < 1e-9, ", ".join(f"{m} {v:.3f}" for m, v in want.items()),
                           ", ".join(f"{m} {ex.as_number(mine.get(m), m):.3f}" for m in want),
                           hint="recall = gold characters covered / gold characters; precision "
                                "= covered / retrieved characters (each chunk counts all its "
                                "characters); IoU = covered / (gold + retrieved - covered). "
                                "Merge overlapping gold spans first; match documents by name.")
        elif diff > worst:
            worst, example = diff, name
    yield ex.Check("300 random cases", worst < 1e-9, "the reference's scores every time",
                   f"largest difference {worst:.3f}" + (f" ({example})" if example else ""))


def step_2_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your span_scores"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _step_2_rows(fn), "your span_scores runs",
                                 "named cases, then random spans of seed "
                                 f"{SEED + 2}")


# --- Step 3: sections at headings ------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~)")
_LEVEL_1_TO_3 = re.compile(r"^#{1,3}[ \t]+\S")


def _heading_starts(text: str) -> list[int]:
    """Reference: offsets of heading lines of level 1-3 outside fenced code blocks."""
    starts, offset, fenced = [], 0, False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _LEVEL_1_TO_3.match(line):
            starts.append(offset)
        offset += len(line)
    return starts


def _sections(text: str) -> list[tuple[int, int]]:
    cuts = [0, *[s for s in _heading_starts(text) if s > 0], len(text)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]


DOC_3 = """Intro line before any heading.

# Tern configuration

Tern reads `tern.toml` at start-up.

## Storage

```bash
# a comment in a code block is not a heading
tern config get storage.path
```

#hashtag is not a heading either (no space).

#### Level four stays inside its section

### Limits

| option | default |
|---|---|
| max_depth | unlimited |

~~~
## nor is this, in a tilde fence
~~~

## Security
Tokens carry one role.
"""


def _step_3_rows(fn: Callable[..., Any]) -> Iterator[ex.Check]:
    rng = np.random.default_rng(SEED + 3)
    texts = {"a page with code fences, a #hashtag and a level-4 heading": DOC_3,
             "a page with no heading at all": "Just one paragraph.\n\nAnd another one.\n",
             "a page that starts with its heading": DOC_3.split("\n", 2)[2]}
    for n in range(3):  # shuffled sections: headings and fences at unseen places
        parts = DOC_3.split("\n\n")
        rng.shuffle(parts)
        texts[f"a shuffled page ({n + 1})"] = "\n\n".join(parts)
    for name, text in texts.items():
        got = _spans(fn(text), "your heading split")
        want = _sections(text)
        firsts = [text[a:b].split("\n", 1)[0][:40] for a, b in got]
        yield ex.Check(name, got == want, f"{len(want)} sections, starting "
                       + ", ".join(repr(text[a:b].split(chr(10), 1)[0][:30]) for a, b in want[:4]),
                       f"{len(got)} sections, starting " + ", ".join(map(repr, firsts[:4])),
                       hint="A section starts at a line beginning with 1 to 3 '#' and a space, "
                            "and runs to the next one. Track ``` and ~~~ fences line by line: "
                            "inside one, a '#' line is a comment. Drop sections that are only "
                            "whitespace.")


def step_3_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your heading split"):
        yield bad
        return
    yield from ex.rows_or_raised(lambda: _step_3_rows(fn), "your heading split runs",
                                 "a page with code fences, and shuffled versions of it")


# --- Step 4: whole sentences under a word-piece budget -----------------------------------------

def _step_4_rows(fn: Callable[..., Any], corpus: list[str]) -> Iterator[ex.Check]:
    for budget in (40, 90):
        over, lost, mergeable, cut, total = [], 0, 0, 0, 0
        for text in corpus:
            got = sorted(_spans(fn(text, budget), "your packer"))
            total += len(got)
            pieces = rag.count_pieces([text[a:b] for a, b in got])
            units = rag.units_of(text)
            unit_pieces = dict(zip(units, rag.count_pieces([text[a:b] for a, b in units]),
                                   strict=True))
            for (a, b), n in zip(got, pieces, strict=True):
                inside = [u for u in units if u[0] >= a and u[1] <= b]
                if n > budget and not (len(inside) <= 1 and any(
                        unit_pieces[u] > budget for u in units if u[0] <= a and b <= u[1])):
                    over.append(n)
            covered = np.zeros(len(text), bool)
            for a, b in got:
                covered[a:b] = True
            lost += sum(1 for i, ch in enumerate(text) if not covered[i] and not ch.isspace())
            starts = {a for a, _ in got}
            ends = {b for _, b in got}
            for u0, u1 in units:  # a cut inside a unit that fits the budget
                if unit_pieces[(u0, u1)] <= budget and any(
                        u0 < x < u1 and text[u0:x].strip() and text[x:u1].strip()
                        for x in starts | ends):
                    cut += 1
            big = [u for u in units if unit_pieces[u] > budget]

            def in_big(a: int, b: int, big: list = big) -> bool:
                return any(u0 <= a and b <= u1 for u0, u1 in big)

            pairs = [(a, d) for (a, b), (c, d) in zip(got, got[1:], strict=False)
                     if not in_big(a, b) and not in_big(c, d)]
            mergeable += sum(n <= budget for n in rag.count_pieces([text[a:d] for a, d in pairs]))
        over_text = f"{len(over)} over (largest {max(over)})" if over else "none over it"
        yield ex.Check(f"budget {budget} word pieces", not over and not lost and not cut,
                       "no chunk over it (unless one sentence alone is), every non-space "
                       "character in a chunk, no sentence cut that fits",
                       f"{total} chunks; {over_text}; {lost} characters lost; {cut} sentences cut",
                       hint="Pack whole units (rag.units_of: sentences and lines) while the "
                            "count (rag.count_pieces) stays within the budget; a unit alone "
                            "over the budget is cut by word pieces (rag.fixed_tokens).")
        yield ex.Check(f"budget {budget}: packed, not one sentence a chunk", mergeable == 0,
                       "no two neighbouring chunks that fit the budget together",
                       f"{mergeable} neighbouring pairs would fit in one chunk",
                       hint="Start a new chunk only when the next unit does not fit.")


def step_4_checks(fn: Any) -> Iterator[ex.Check]:
    if bad := ex.expect_callable(fn, "your sentence packer"):
        yield bad
        return
    corpus = [DOC_3.replace("```bash", "").replace("```", "").replace("~~~", ""),
              "One short sentence. " * 30 + "A very long sentence " + "and more " * 80 + "ends here.",
              "\n".join(f"- item {i}: leave is booked in the portal by the {i}th" for i in range(25))]
    yield from ex.rows_or_raised(lambda: _step_4_rows(fn, corpus), "your packer runs",
                                 "three texts (sections, a 160-word sentence, a list), budgets "
                                 "40 and 90")
