"""Set up a class on a real JupyterHub: the shared read-only folder, the homes, the hub.

``Classroom`` is a context manager. Entering it copies the course (``labsupport`` and
``data``) into ``ROOT/shared``, extracts the model and embeds 04's requests there, mounts that folder read-only (a
read-only bind mount, as a hub would mount a shared volume), gives each learner a home with a
copy of ``notebooks/`` (what nbgitpuller or a first-login copy does) and starts JupyterHub with
``jupyterhub_config.py``. Leaving it stops the hub (and with it every learner's server),
unmounts and, unless asked to keep it, deletes the class folder.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from labsupport import embeddings

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHP = REPO / ".classroom" / "node_modules" / ".bin" / "configurable-http-proxy"
CONFIG = Path(__file__).with_name("jupyterhub_config.py")
PORTS = {"CLASS_PORT": 18000, "CLASS_PROXY_API_PORT": 18001, "CLASS_HUB_PORT": 18081}


def checksums(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (the shared folder's fingerprint)."""
    return {str(p.relative_to(folder)): embeddings.sha256_of(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def mount_read_only(folder: Path) -> str:
    """Make ``folder`` read-only for everyone, root included; returns how it was done.

    A read-only bind mount needs root (or CAP_SYS_ADMIN). Without it, the files' write bits are
    removed, which stops any user but root; as root that is not enough, so we refuse."""
    if os.geteuid() == 0:
        bind = subprocess.run(["mount", "--bind", folder, folder], capture_output=True, text=True)
        if bind.returncode == 0:
            ro = subprocess.run(["mount", "-o", "remount,ro,bind", folder],
                                capture_output=True, text=True)
            if ro.returncode == 0:
                return "read-only bind mount"
            subprocess.run(["umount", folder])
        raise RuntimeError(
            f"running as root, and a read-only bind mount of {folder} failed "
            f"({(bind.stderr or '').strip() or 'remount refused'}): root writes through "
            "permission bits, so the shared folder could not be made read-only. Run the class "
            "test as a normal user, or where root may mount (CAP_SYS_ADMIN).")
    subprocess.run(["chmod", "-R", "a-w", folder], check=True)
    return "write permission removed (chmod -R a-w)"


def unmount(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["umount", folder], capture_output=True)
    else:
        subprocess.run(["chmod", "-R", "u+w", folder], capture_output=True)


class Classroom:
    """A JupyterHub with ``learners`` homes and a read-only shared folder, on 127.0.0.1."""

    def __init__(self, learners: list[str], keep: bool = False) -> None:
        self.learners = learners
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="labsupport-class-"))
        self.shared = self.root / "shared"
        self.homes = {name: self.root / "home" / name for name in learners}
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{PORTS['CLASS_PORT']}"
        self.hub: subprocess.Popen | None = None
        self.read_only_by = ""
        self.shared_before: dict[str, str] = {}

    # --- set up -------------------------------------------------------------------------
    def prepare_shared(self) -> None:
        """The course and the model, as an administrator installs them for everyone."""
        course = self.shared / "course"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "labsupport", course / "labsupport", ignore=ignore)
        shutil.copytree(REPO / "data", course / "data", ignore=ignore)
        env = {**os.environ, "PYTHONPATH": str(course), "LABSUPPORT_CACHE": str(self.shared / "cache")}
        # Before the folder is locked: extract and verify the model, embed 04's requests once
        # for everyone (--warm), and compile the modules.
        subprocess.run([sys.executable, "-m", "labsupport.embeddings", "--warm"], env=env,
                       check=True, capture_output=True, cwd=self.root)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(course)], check=True)

    def prepare_homes(self) -> None:
        for home in self.homes.values():
            shutil.copytree(REPO / "notebooks", home / "notebooks",
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints"))

    def start_hub(self) -> None:
        busy = [p for p in PORTS.values() if not port_is_free(p)]
        if busy:
            raise RuntimeError(f"ports {busy} on 127.0.0.1 are in use: is another class running?")
        if not CHP.exists():
            raise RuntimeError(f"{CHP} is missing: `make classroom` installs it with npm")
        env = {**os.environ, **{k: str(v) for k, v in PORTS.items()},
               "CLASS_ROOT": str(self.root), "CLASS_SHARED": str(self.shared),
               "CLASS_CHP": str(CHP), "CLASS_TOKEN": self.token,
               "CLASS_SINGLEUSER": str(VENV_BIN / "jupyterhub-singleuser"),
               "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        self.hub_log = open(self.root / "hub.log", "w")  # noqa: SIM115 (closed in stop_hub)
        self.hub = subprocess.Popen([str(VENV_BIN / "jupyterhub"), "-f", str(CONFIG)],
                                    cwd=self.root, env=env, stdout=self.hub_log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise RuntimeError(f"the hub exited; see {self.root / 'hub.log'}")
            try:
                if httpx.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the hub did not answer in 60 s; see {self.root / 'hub.log'}")

    def __enter__(self) -> Classroom:
        try:
            self.prepare_shared()
            self.prepare_homes()
            self.shared_before = checksums(self.shared)
            self.read_only_by = mount_read_only(self.shared)
            self.start_hub()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    # --- tear down ----------------------------------------------------------------------
    def stop_hub(self) -> None:
        """Stop the hub; it stops every learner's server (cleanup_servers is on by default)."""
        if self.hub is None:
            return
        self.hub.terminate()
        try:
            self.hub.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.hub.kill()
        self.hub = None
        self.hub_log.close()
        for proc in learner_processes(self.learners):  # anything a server left behind
            proc.kill()

    def __exit__(self, *exc: object) -> None:
        self.stop_hub()
        if self.read_only_by:
            unmount(self.shared)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def learner_processes(learners: list[str]) -> list[psutil.Process]:
    """Every process started for one of ``learners`` (their server, kernels and services):
    the hub puts JUPYTERHUB_USER in the server's environment and children inherit it."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("JUPYTERHUB_USER") in learners:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
