"""Where notebook 07's Chroma runs: embedded in the kernel, or a server on loopback.

Backs ``07_vector_database_design.ipynb`` (its "Server mode" section). The mechanism in
``labsupport.vector_database_design`` works on any :class:`ChromaLocation`:

* embedded: ``chromadb.PersistentClient`` in a folder (by default one temporary folder
  per process, so a second Run All reuses it);
* a server: ``chroma run`` on 127.0.0.1, reached with ``chromadb.HttpClient``; set
  ``$LABSUPPORT_CHROMA_URL`` to use one for the whole notebook.

Every client gets anonymized telemetry off. From the shell::

    python -m labsupport.services.vector_database_design --port 8000

runs a Chroma server on 127.0.0.1 with a temporary folder (``--path`` to choose one).
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_CHROMA_URL = "LABSUPPORT_CHROMA_URL"  # e.g. http://127.0.0.1:8000: use a Chroma server


# --- where the data lives: embedded or a server ---------------------------------------


def chroma_settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


@dataclass(frozen=True)
class ChromaLocation:
    """Where the data lives: a folder (embedded Chroma) or a server URL (HttpClient)."""

    path: str | None = None
    url: str | None = None

    def client(self, tenant: str | None = None, database: str | None = None) -> Any:
        """A client bound to a Chroma tenant and database, both created on first use."""
        import chromadb
        from chromadb.config import DEFAULT_DATABASE, DEFAULT_TENANT

        tenant, database = tenant or DEFAULT_TENANT, database or DEFAULT_DATABASE
        if (tenant, database) != (DEFAULT_TENANT, DEFAULT_DATABASE):
            self._create(tenant, database)
        if self.url:
            from urllib.parse import urlparse

            parsed = urlparse(self.url)
            return chromadb.HttpClient(host=parsed.hostname or "127.0.0.1",
                                       port=parsed.port or 8000, ssl=parsed.scheme == "https",
                                       settings=chroma_settings(), tenant=tenant,
                                       database=database)
        return chromadb.PersistentClient(path=self.path, settings=chroma_settings(),
                                         tenant=tenant, database=database)

    def _create(self, tenant: str, database: str) -> None:
        from chromadb.errors import NotFoundError

        admin = self.admin()
        try:
            admin.get_tenant(tenant)
        except (NotFoundError, ValueError):
            admin.create_tenant(tenant)
        try:
            admin.get_database(database, tenant=tenant)
        except (NotFoundError, ValueError):
            admin.create_database(database, tenant=tenant)

    def admin(self) -> Any:
        """An AdminClient, which creates Chroma tenants and databases."""
        import chromadb

        settings = chroma_settings()
        if self.url:
            from urllib.parse import urlparse

            parsed = urlparse(self.url)
            settings.chroma_api_impl = "chromadb.api.fastapi.FastAPI"
            settings.chroma_server_host = parsed.hostname
            settings.chroma_server_http_port = parsed.port or 8000
        else:
            settings.is_persistent = True
            settings.persist_directory = self.path
        return chromadb.AdminClient(settings)


@functools.cache
def session_folder() -> str:
    """This process's folder for embedded Chroma, made on first use.

    One folder per kernel: a second Run All reuses the same embedded Chroma (and its
    memory) instead of opening another one beside it.
    """
    return tempfile.mkdtemp(prefix="labsupport-chroma-")


def default_location(path: str | Path | None = None) -> ChromaLocation:
    """A server when ``$LABSUPPORT_CHROMA_URL`` is set, else embedded Chroma in ``path``
    (this process's temporary folder if ``path`` is None)."""
    url = os.environ.get(ENV_CHROMA_URL)
    if url:
        return ChromaLocation(url=url)
    return ChromaLocation(path=str(path or session_folder()))


# --- a Chroma server on loopback ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ChromaServer:
    """A ``chroma run`` process on 127.0.0.1; ``stop()`` ends it."""

    url: str
    path: str
    process: subprocess.Popen = field(repr=False)

    @property
    def location(self) -> ChromaLocation:
        return ChromaLocation(url=self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _SERVERS.pop(self.url, None)


_SERVERS: dict[str, ChromaServer] = {}  # started by this process: a re-run stops them first


def _chroma_command(path: str, port: int) -> list[str]:
    # `chroma run` is chromadb.cli.cli:app, which only hands its arguments to the Rust
    # server in chromadb_rust_bindings.cli. Calling that directly skips importing the
    # chromadb Python package, which takes seconds: the server answers in about 0.1 s.
    args = ["chroma", "run", "--path", path, "--host", "127.0.0.1", "--port", str(port)]
    code = f"import chromadb_rust_bindings as rust; rust.cli({args!r})"
    return [sys.executable, "-c", code]


def start_chroma_server(path: str | None = None, port: int | None = None,
                        timeout: float = 60.0) -> ChromaServer:
    """Start ``chroma run`` on loopback (stopping any this process started before) and
    wait until its heartbeat answers."""
    import httpx

    stop_all_servers()
    path = path or tempfile.mkdtemp(prefix="labsupport-chroma-server-")
    port = port or free_port()
    process = subprocess.Popen(_chroma_command(path, port), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    server = ChromaServer(f"http://127.0.0.1:{port}", path, process)
    _SERVERS[server.url] = server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            _SERVERS.pop(server.url, None)
            raise RuntimeError(f"chroma run exited with {process.returncode}: {err[-800:]}")
        try:
            if httpx.get(f"{server.url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.05)  # seconds; the server usually answers within 0.1 s
    server.stop()
    raise RuntimeError(f"chroma run did not answer on {server.url} within {timeout} s")


def stop_all_servers() -> None:
    """Stop every server this process started (a notebook's last cell calls it)."""
    for server in list(_SERVERS.values()):
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m labsupport.services.vector_database_design --port P [--path DIR]``."""
    parser = argparse.ArgumentParser(
        description="Run a Chroma server (`chroma run`) on 127.0.0.1 for notebook 07.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--path", default=None, help="data folder (default: a temporary one)")
    args = parser.parse_args(argv)
    path = args.path or tempfile.mkdtemp(prefix="labsupport-chroma-server-")
    print(f"Chroma on http://127.0.0.1:{args.port} (data in {path}); "
          f"set {ENV_CHROMA_URL}=http://127.0.0.1:{args.port} to use it. Ctrl-C stops it.")
    sys.stdout.flush()
    command = _chroma_command(path, args.port)
    os.execv(command[0], command)  # become the server: Ctrl-C and kill reach it directly
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
