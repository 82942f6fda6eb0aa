"""The offline model loader: extraction, hash verification, clear messages."""

import zipfile

import numpy as np
import pytest

from labsupport import embeddings


def _fake_zip(path, weights: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.safetensors", weights)
        archive.writestr("modules.json", "[]")
    return path


def test_packaged_zip_is_found_without_importing_the_package():
    import sys

    path = embeddings.packaged_zip_path()
    assert path.name == "model.zip" and path.stat().st_size > 80_000_000
    assert "all_minilm_l6_v2" not in sys.modules  # its __init__ prints; we never import it


def test_hash_mismatch_gives_one_clear_message(tmp_path):
    archive = _fake_zip(tmp_path / "model.zip", b"not the real weights")
    with pytest.raises(embeddings.ModelUnavailableError) as info:
        embeddings.prepare_model(tmp_path / "cache" / "m", zip_path=archive)
    message = str(info.value)
    assert "corrupt" in message and embeddings.WEIGHTS_SHA256 in message
    assert "python -m labsupport.embeddings" in message  # says how to fix it
    assert not (tmp_path / "cache" / "m").exists()  # nothing half-extracted is left


def test_weights_changed_after_extraction_are_caught(tmp_path, monkeypatch):
    weights = b"pretend weights"
    monkeypatch.setattr(embeddings, "WEIGHTS_SHA256", __import__("hashlib").sha256(weights).hexdigest())
    target = tmp_path / "m"
    embeddings.prepare_model(target, zip_path=_fake_zip(tmp_path / "model.zip", weights))
    embeddings.prepare_model(target)  # cached: no zip needed the second time
    (target / "model.safetensors").write_bytes(b"tampered weights!")  # new size, new mtime
    with pytest.raises(embeddings.ModelUnavailableError, match="corrupt"):
        embeddings.prepare_model(target)


def test_not_a_zip_gives_a_clear_message(tmp_path):
    bad = tmp_path / "model.zip"
    bad.write_bytes(b"garbage")
    with pytest.raises(embeddings.ModelUnavailableError, match="not a valid zip"):
        embeddings.prepare_model(tmp_path / "m", zip_path=bad)


def test_override_that_is_not_a_model_folder_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv(embeddings.ENV_MODEL, str(tmp_path))
    with pytest.raises(embeddings.ModelUnavailableError, match="Unset LABSUPPORT_EMBEDDING_MODEL"):
        embeddings.model_path()


def test_cached_model_verifies_against_the_published_hash():
    path = embeddings.prepare_model()
    embeddings.verify_model_dir(path, full=True)
    assert embeddings.sha256_of(path / "model.safetensors") == embeddings.WEIGHTS_SHA256


def test_embeddings_are_unit_vectors_and_capture_meaning():
    vectors = embeddings.embed(["How do I reset my password?", "I forgot my login",
                                "The quarterly revenue grew by 4%."])
    assert vectors.shape == (3, embeddings.DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    related, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert related > unrelated + 0.3
    ident = embeddings.identity()
    assert (ident.name, ident.dimension) == ("sentence-transformers/all-MiniLM-L6-v2", 384)
    assert embeddings.get_model() is embeddings.get_model()  # one instance per process


def test_chroma_embedding_function_matches_embed():
    function = embeddings.chroma_embedding_function()
    (vector,) = function(["hello"])
    np.testing.assert_allclose(vector, embeddings.embed("hello")[0], atol=1e-6)


def test_word_piece_count():
    assert embeddings.count_word_pieces("hello world") == 2


def test_read_only_model_folder_still_verifies(tmp_path, monkeypatch):
    """A shared, read-only model folder (a JupyterHub): the marker cannot be written."""
    weights = b"pretend weights"
    monkeypatch.setattr(embeddings, "WEIGHTS_SHA256", __import__("hashlib").sha256(weights).hexdigest())
    target = tmp_path / "m"
    embeddings.prepare_model(target, zip_path=_fake_zip(tmp_path / "model.zip", weights))
    (target / ".verified.json").unlink()

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(type(target), "write_text", read_only)
    embeddings.verify_model_dir(target, full=True)  # hashes, cannot write, does not fail
    assert not (target / ".verified.json").exists()


def test_a_read_only_cache_sends_derived_caches_to_the_users_own(tmp_path, monkeypatch):
    """A hub shares one read-only $LABSUPPORT_CACHE holding the model: the embedding caches and
    05's Chroma store go to the user's ~/.cache/labsupport instead (checked by hand on a real
    read-only bind mount; here the mount is simulated, since root writes through permissions)."""
    shared, home = tmp_path / "shared", tmp_path / "home"
    monkeypatch.setenv(embeddings.ENV_CACHE, str(shared))
    monkeypatch.setenv("HOME", str(home))
    assert embeddings.derived_cache_root() == shared  # writable: one folder for everything
    real = embeddings._writable
    monkeypatch.setattr(embeddings, "_writable", lambda folder: folder != shared and real(folder))
    assert embeddings.derived_cache_root() == home / ".cache" / "labsupport"
    assert embeddings.default_model_dir().parent == shared / "models"  # the model stays shared
    from labsupport import rag_pipeline as rag
    assert rag.default_cache().path == home / ".cache" / "labsupport" / "rag" / "embeddings.npz"
    (home / ".cache" / "labsupport" / "rag").mkdir(parents=True)
    assert [p.name for p in embeddings.clear_caches()] == ["rag"]  # the user's, not the shared


def test_a_learner_reads_what_the_hub_computed_in_the_read_only_cache(tmp_path, monkeypatch):
    """An administrator warms the shared cache once (``--warm``); with it read-only, each
    learner's cache starts from the shared vectors and only new texts are embedded, into the
    learner's own file."""
    shared, home = tmp_path / "shared", tmp_path / "home"
    monkeypatch.setenv(embeddings.ENV_CACHE, str(shared))
    monkeypatch.setenv("HOME", str(home))
    calls: list[list[str]] = []

    def fake(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.ones((len(texts), 3), dtype=np.float32)

    admin = embeddings.EmbeddingCache.load(embeddings.derived_cache_root() / "c.npz", embed_fn=fake)
    admin.embed(["a", "b"])  # writable: saved in the shared folder
    assert embeddings.shared_copy(shared / "c.npz") is None  # the user's own folder: no copy
    real = embeddings._writable
    monkeypatch.setattr(embeddings, "_writable", lambda folder: folder != shared and real(folder))
    own = home / ".cache" / "labsupport" / "c.npz"
    assert embeddings.shared_copy(own) == shared / "c.npz"
    learner = embeddings.EmbeddingCache.load(own, embed_fn=fake)
    learner.embed(["a", "b", "c"])
    assert calls == [["a", "b"], ["c"]]  # only the new text reached the model
    assert own.is_file() and learner.hits == 2


def test_writable_is_tried_not_guessed(tmp_path):
    assert embeddings._writable(tmp_path / "new" / "folder")  # created on the way
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert not embeddings._writable(blocker / "below")  # a file where a folder should be
