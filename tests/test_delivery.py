"""Classroom delivery: offline runs, the answer-key handout, reset that keeps edits."""

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labsupport import embeddings, exercises
from notebook_runner import OFFLINE_GUARD, run

ROOT = Path(__file__).resolve().parents[1]


def _load_guard():
    spec = importlib.util.spec_from_file_location("offline_guard", OFFLINE_GUARD / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    real = (__import__("socket").socket.connect, __import__("socket").getaddrinfo)
    spec.loader.exec_module(module)  # patches socket: undo right after
    import socket

    socket.socket.connect, socket.getaddrinfo = real
    return module


def test_offline_guard_refuses_everything_but_loopback():
    guard = _load_guard()
    for host in ("127.0.0.1", "::1", "localhost", "127.5.5.5"):
        guard._guard((host, 80))  # allowed
    for host in ("192.0.2.1", "10.0.0.1", "2001:db8::1", "huggingface.co"):
        with pytest.raises(guard.OfflineViolation):
            guard._guard((host, 443))


def test_notebook_kernels_run_with_the_guard_on(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("SOLUTION = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import os, socket\n"
                                  "print(socket.socket.connect.__name__, os.environ['HF_HUB_OFFLINE'])")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    record = run(path, tmp_path / "run", {})
    assert record.error is None
    out = nbformat.read(record.output, as_version=4)
    assert out.cells[1].outputs[0]["text"].strip() == "_guarded_connect 1"


def _notebook_hashes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (ROOT / "notebooks").glob("*.ipynb")}


def test_reset_forgets_progress_and_caches_but_keeps_notebooks_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv(exercises.ENV_PROGRESS, str(tmp_path / "progress.json"))
    monkeypatch.setenv(embeddings.ENV_CACHE, str(tmp_path / "cache"))
    exercises.record_attempt("02_load_balancing", True)
    (tmp_path / "cache" / "routing").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "m").mkdir(parents=True)
    before = _notebook_hashes()
    exercises.reset_progress()
    removed = embeddings.clear_caches()
    assert [p.name for p in removed] == ["routing"]
    assert (tmp_path / "cache" / "models" / "m").is_dir()
    assert exercises.load_progress() == {}
    assert _notebook_hashes() == before
    dry = subprocess.run(["make", "-n", "reset"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "notebooks" not in dry  # make reset never touches the notebooks


def test_make_solutions_exports_answer_key_handouts(tmp_path):
    assert "--export-html build/solutions" in subprocess.run(
        ["make", "-n", "solutions"], cwd=ROOT, capture_output=True, text=True).stdout
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench.py"), "--export-html",
                           str(tmp_path), "--only", "00_start_here"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = (tmp_path / "00_start_here.html").read_text()
    assert "All set." in page and "<html" in page


def test_handouts_are_not_committed():
    ignored = subprocess.run(["git", "check-ignore", "build/solutions/x.html"], cwd=ROOT,
                             capture_output=True, text=True)
    assert ignored.returncode == 0


def test_binder_setup_on_a_fresh_venv_from_the_lock(tmp_path):
    """Binder's setup, for real: a fresh venv from requirements.lock, then postBuild's
    steps with an empty model cache, then Run All of 00_start_here in that venv."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "-q", "-r", str(ROOT / "requirements.lock")],
        capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
           embeddings.ENV_CACHE: str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(ROOT / "postBuild")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "embedding model: OK" in proc.stdout
    assert (tmp_path / "cache" / "models").is_dir()  # extracted into the empty cache
    record = run(ROOT / "notebooks" / "00_start_here.ipynb", tmp_path / "run", {},
                 env={embeddings.ENV_CACHE: str(tmp_path / "cache")},
                 python=str(venv / "bin" / "python"))
    assert record.error is None, record.error
    # Printed lines, and the text form of displayed tables (the setup check is a table).
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nbformat.read(record.output, as_version=4).cells
                     for o in c.get("outputs", []))
    assert "All set." in text and "FAIL" not in text, text
    assert str(venv) in text  # the kernel ran on the fresh venv's Python
