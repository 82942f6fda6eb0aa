"""Wrong answers to notebook 05's scenario exercise ("the HR assistant gives incomplete
answers").

Each builder returns a chunker ``my_chunker(text)`` a learner could plausibly write: strings
that are verbatim pieces of ``text``, or ``(start, end)`` offsets. The checker ingests the
whole handbook with it and must tell every one "not yet", with the named row failing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labsupport import rag_pipeline as rag
from labsupport.checks import rag_pipeline as checks
from labsupport.solutions import rag_pipeline as key

from . import Exercise, WrongAnswer

Chunker = Callable[[str], list[Any]]


def starter() -> Chunker:
    """The notebook's untouched starter cell."""

    def my_chunker(text: str) -> list[str]:
        """Split one policy into chunks: verbatim strings or (start, end) offsets."""
        return [text[i: i + 2000] for i in range(0, len(text), 2000)]

    return my_chunker


def _strip_markdown(text: str) -> list[str]:
    """'Cleans' each paragraph of its Markdown: the chunks are no longer the source's text."""
    return [p.replace("#", "").strip() for p in text.split("\n\n") if p.strip()]


EXERCISES = [
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: key.my_chunker,
        gallery=[
            WrongAnswer("starter", "2,000-character windows: about 400 word pieces, so MiniLM "
                        "never reads the second half of each chunk", starter, "model's limit"),
            WrongAnswer("whole document", "one vector per policy blends every topic and "
                        "MiniLM reads only its first 254 word pieces",
                        lambda: lambda text: [text], "model's limit"),
            WrongAnswer("the fixed-size baseline", "200-word-piece windows fit the model but "
                        "cut through answers and carry unrelated text: no better than the "
                        "baseline", lambda: lambda text: rag.fixed_tokens(text, 200, 0),
                        "IoU@5 above the fixed-size baseline"),
            WrongAnswer("recursive 800 characters", "LangChain-style splitting at 800 "
                        "characters keeps chunks under the limit but too broad: answers come "
                        "buried in unrelated text",
                        lambda: lambda text: rag.recursive(text, 800, 0),
                        "IoU@5 above the fixed-size baseline"),
            WrongAnswer("one chunk per line", "a rule, its exception and its heading end up in "
                        "different chunks, so the top 5 miss part of the answer",
                        lambda: lambda text: [line for line in text.split("\n") if line.strip()],
                        "span recall@5"),
            WrongAnswer("one chunk per paragraph", "blank lines split an answer from its "
                        "heading and its conditions: recall falls below the target",
                        lambda: lambda text: [p for p in text.split("\n\n") if p.strip()],
                        "span recall@5"),
            WrongAnswer("Markdown stripped", "rewritten chunks cannot be traced to a span of "
                        "the source, so nothing can be cited or scored",
                        lambda: _strip_markdown, "your code runs"),
            WrongAnswer("nothing", "no chunks: nothing to retrieve",
                        lambda: lambda text: [], "chunks produced"),
        ],
    ),
]
