"""Serve a FastAPI app for real on 127.0.0.1, in a background thread of the kernel.

Shared by the notebooks that run HTTP services: 01_api_communication (payment and order
services), 03_message_queues (the upload front door) and 06_ai_observability (the
simulated LLM server). Servers are registered by name, so a re-run cell that starts a
server of the same name stops the old one first: Run All twice never leaves two behind.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

# What every course server gets unless a module asks otherwise: quiet logs, no lifespan
# events (pass lifespan="on" for an app that starts work in them), and at most 2 seconds
# for open requests to finish when the server stops.
# timeout_keep_alive: an idle connection stays open 30 s (uvicorn's default is 5 s). httpx
# reuses a pooled connection for up to 5 s (its keepalive_expiry); with both at 5 s, on a busy
# machine the server can close a connection just as the client sends on it, an httpx.ReadError
# (the likely cause of the two that 06 raised with twenty learners on two cores). The server
# must keep a connection longer than the client.
DEFAULT_OPTIONS: dict[str, Any] = {"log_level": "warning", "lifespan": "off",
                                   "timeout_graceful_shutdown": 2, "timeout_keep_alive": 30}


class ServerHandle:
    """A uvicorn server in a background thread. ``.url``, ``.stop()``; a context manager."""

    def __init__(self, app: Any, name: str, port: int = 0,
                 on_stop: Callable[[], None] | None = None, **uvicorn_options: Any) -> None:
        import uvicorn  # here, not at the top: worker processes import the modules too

        self.name = name
        self.app = app
        self._on_stop = on_stop  # e.g. shut down the service's worker pool
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # port 0: the OS picks a free port, no race
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, **{**DEFAULT_OPTIONS, **uvicorn_options}))
        self._sock = sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn-{name}", daemon=True)

    def start(self, timeout: float = 10.0) -> ServerHandle:
        self._thread.start()
        deadline = time.monotonic() + timeout  # seconds
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                raise RuntimeError(f"server {self.name!r} did not start")
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it; safe to call twice."""
        self._server.should_exit = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._sock.close()
        if self._on_stop is not None:
            on_stop, self._on_stop = self._on_stop, None
            on_stop()
        if RUNNING.get(self.name) is self:
            del RUNNING[self.name]

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<server {self.name} {self.url} {'running' if self.running else 'stopped'}>"


RUNNING: dict[str, ServerHandle] = {}  # name -> handle: a re-run cell replaces, never doubles


def serve(app: Any, name: str, port: int = 0, on_stop: Callable[[], None] | None = None,
          **uvicorn_options: Any) -> ServerHandle:
    """Serve ``app`` on 127.0.0.1 in the background; stops the previous server of that name.
    ``on_stop`` runs once after the server has stopped; ``uvicorn_options`` override
    :data:`DEFAULT_OPTIONS` (see ``uvicorn.Config``)."""
    stop(name)
    handle = ServerHandle(app, name, port, on_stop, **uvicorn_options).start()
    RUNNING[name] = handle
    return handle


def stop(name: str) -> bool:
    """Stop the server called ``name``, if one runs; True if it did."""
    handle = RUNNING.pop(name, None)
    if handle is None:
        return False
    handle.stop()
    return True


def running_servers() -> list[ServerHandle]:
    return [h for h in RUNNING.values() if h.running]


def stop_all() -> int:
    """Stop every server started in this process; returns how many there were."""
    handles = list(RUNNING.values())
    for handle in handles:
        handle.stop()
    return len(handles)
