"""Build ``texts.jsonl`` and ``minilm.npz``: real English text, and its all-MiniLM-L6-v2
vectors, for the HNSW measurement of ``07_vector_database_design.ipynb``.

The text is the prose paragraphs of the docstrings of Python 3.11's standard library
(modules, classes and functions; Python Software Foundation License), 60 to 300
characters, without doctest prompts, deduplicated, and 5,000 of them drawn with a fixed
seed. The vectors are the course model's (mean pooling, unit length), stored as float16.

    .venv/bin/python data/docstrings/build.py      # about a minute on two cores
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_TEXTS, SEED = 5000, 0
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__",
        "lib2to3", "ensurepip", "venv", "pydoc_data", "test", "xxsubtype", "msilib",
        "winreg", "winsound", "_msi", "nt", "msvcrt", "_winapi", "_overlapped"}


def paragraphs(doc: object) -> list[str]:
    """The paragraphs of a docstring that read as prose: 60-300 characters, 6+ words,
    no doctest prompt."""
    if not isinstance(doc, str):
        return []
    out = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        text = " ".join(block.split())
        if 60 <= len(text) <= 300 and ">>>" not in text and len(text.split()) >= 6 \
                and re.search(r"[a-z]{3}", text):
            out.append(text)
    return out


def _modules() -> list[str]:
    """Every importable standard-library module and submodule name, sorted."""
    import pkgutil

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top in SKIP or top.startswith("_"):
            continue
        names.append(top)
        try:
            module = importlib.import_module(top)
        except Exception:  # noqa: BLE001 - platform modules that do not import here
            continue
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + "."):
            if not any(part.startswith("_") or part in SKIP for part in info.name.split(".")):
                names.append(info.name)
    return names


def collect() -> dict[str, str]:
    """text -> where it came from (module.name), for every public docstring."""
    found: dict[str, str] = {}
    for name in _modules():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform modules that do not import here
            continue
        items = [(name, module)]
        for key, value in sorted(vars(module).items()):
            if key.startswith("_") or not (inspect.isclass(value) or inspect.isroutine(value)):
                continue
            items.append((f"{name}.{key}", value))
            if inspect.isclass(value):
                items += [(f"{name}.{key}.{m}", v) for m, v in sorted(vars(value).items())
                          if not m.startswith("_") and inspect.isroutine(v)]
        for where, obj in items:
            for text in paragraphs(getattr(obj, "__doc__", None)):
                found.setdefault(text, where)
    return found


def main() -> None:
    from labsupport import embeddings

    found = collect()
    texts = sorted(found)
    rng = np.random.default_rng(SEED)
    chosen = sorted(rng.choice(len(texts), size=min(N_TEXTS, len(texts)), replace=False))
    rows = [{"text": texts[i], "source": found[texts[i]]} for i in chosen]
    vectors = embeddings.embed([r["text"] for r in rows], batch_size=32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    with (HERE / "texts.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    np.savez_compressed(HERE / "minilm.npz", vectors=vectors.astype(np.float16))
    print(f"{len(texts)} candidate paragraphs; wrote {len(rows)} texts and vectors "
          f"{vectors.shape} to {HERE}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    main()
