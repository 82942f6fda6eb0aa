"""One simulated learner: log in through the hub and Run All every notebook, as the browser does.

The learner's server is started through the hub's REST API; each notebook gets a session
(``POST /user/NAME/api/sessions``, which starts its kernel), and its code cells go to the
kernel one by one over the kernel's websocket in the Jupyter messaging protocol, each waiting
for its ``execute_reply``. Everything passes through the hub's proxy. The parameters cell gets
``SOLUTION = True`` appended, so every check runs the answer key and records progress.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nbformat
import websockets

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in IPython's tracebacks
CELL_TIMEOUT_S = 1200.0  # one cell; twenty learners on two cores slow a cell down about 20×
SERVER_TIMEOUT_S = 600.0  # the hub's own start_timeout is 300 s


@dataclass
class NotebookRun:
    notebook: str
    kernel_start_s: float  # POST session until the kernel is up
    run_all_s: float  # first execute_request to last execute_reply
    cells: int
    errors: list[str] = field(default_factory=list)


@dataclass
class LearnerRun:
    learner: str
    server_ready_s: float = 0.0  # from the learner's login
    first_cell_s: float = 0.0  # from login to the first cell's reply: what the learner waits
    notebooks: list[NotebookRun] = field(default_factory=list)
    labsupport_file: str = ""  # where the kernel imported labsupport from
    failure: str = ""  # an error of the harness or the hub (not of a notebook)


def notebook_cells(path: Path) -> list[str]:
    """The notebook's code cells, with ``SOLUTION = True`` after the parameters cell's code."""
    cells = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            tags = cell.metadata.get("tags", [])
            cells.append(cell.source + ("\nSOLUTION = True" if "parameters" in tags else ""))
    return cells


def execute_request(code: str, session: str, name: str) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    return msg_id, json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                   "username": name, "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}})


async def execute(ws, code: str, session: str, name: str) -> tuple[str, list[str], str]:
    """Run one cell; (reply status, error lines, stdout text). Done when both the reply (shell
    channel) and the kernel's "idle" (iopub, after the cell's last output) have arrived: the
    two channels are not ordered with respect to each other."""
    msg_id, request = execute_request(code, session, name)
    await ws.send(request)
    errors, stdout, status, idle = [], [], None, False
    while status is None or not idle:
        raw = await asyncio.wait_for(ws.recv(), CELL_TIMEOUT_S)
        if isinstance(raw, bytes):  # a message with binary buffers (widget state): not a reply
            continue
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":  # the message and the traceback's last two entries, without colour
            where = [ANSI.sub("", line) for line in content.get("traceback", [])[-3:-1]]
            errors.append(f"{content['ename']}: {content['evalue'][:3000]} | {' | '.join(where)}")
        elif kind == "stream" and content.get("name") == "stdout":
            stdout.append(content["text"])
        elif kind == "status":
            idle = content["execution_state"] == "idle"
        elif kind == "execute_reply":
            status = content["status"]
    return status, errors, "".join(stdout)


class Learner:
    def __init__(self, hub_url: str, admin_token: str, name: str) -> None:
        self.hub_url, self.name = hub_url, name
        self.admin = {"Authorization": f"token {admin_token}"}
        self.run = LearnerRun(name)

    async def log_in(self, client: httpx.AsyncClient) -> str:
        """Create the user, start their server, wait until it is ready; the user's API token."""
        api = f"{self.hub_url}/hub/api/users/{self.name}"
        await client.post(api, headers=self.admin)  # 201, or 409 if the user exists
        started = await client.post(f"{api}/server", headers=self.admin)
        if started.status_code not in (201, 202):
            raise RuntimeError(f"server start: HTTP {started.status_code} {started.text[:200]}")
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not (await client.get(api, headers=self.admin)).json()["servers"].get(
                "", {}).get("ready"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {SERVER_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.5)
        token = await client.post(f"{api}/tokens", headers=self.admin, json={"expires_in": 7200})
        return token.json()["token"]

    async def run_notebook(self, client: httpx.AsyncClient, token: str, path: Path,
                           login_at: float) -> NotebookRun:
        base = f"{self.hub_url}/user/{self.name}/api"
        auth = {"Authorization": f"token {token}"}
        t0 = time.perf_counter()
        session = (await client.post(f"{base}/sessions", headers=auth, json={
            "path": f"notebooks/{path.name}", "type": "notebook", "name": path.name,
            "kernel": {"name": "python3"}})).json()
        kernel_id, session_id = session["kernel"]["id"], session["id"]
        ws_url = (f"{self.hub_url.replace('http', 'ws', 1)}/user/{self.name}/api/kernels/"
                  f"{kernel_id}/channels?session_id={session_id}")
        cells = notebook_cells(path)
        run = NotebookRun(path.stem, 0.0, 0.0, 0)
        # No websocket pings: a browser sends none, and a busy server may answer late.
        async with websockets.connect(ws_url, additional_headers=auth, max_size=2**27,
                                      ping_interval=None, open_timeout=300) as ws:
            run.kernel_start_s = time.perf_counter() - t0
            t_cells = time.perf_counter()
            for code in cells:
                status, errors, _ = await execute(ws, code, session_id, self.name)
                run.cells += 1
                if not self.run.first_cell_s:
                    self.run.first_cell_s = time.perf_counter() - login_at
                run.errors += errors
                if status != "ok":  # Run All stops at the first error, as JupyterLab does
                    break
            run.run_all_s = time.perf_counter() - t_cells
            if not self.run.labsupport_file:
                _, _, out = await execute(ws, "import labsupport; print(labsupport.__file__)",
                                          session_id, self.name)
                self.run.labsupport_file = out.strip()
        await client.delete(f"{base}/sessions/{session_id}", headers=auth)  # shuts the kernel
        return run

    async def attend(self, notebooks: list[Path], start_delay_s: float) -> LearnerRun:
        """Arrive after ``start_delay_s``, log in, Run All every notebook in course order."""
        await asyncio.sleep(start_delay_s)
        login_at = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=300) as client:
                token = await self.log_in(client)
                self.run.server_ready_s = time.perf_counter() - login_at
                for path in notebooks:
                    self.run.notebooks.append(
                        await self.run_notebook(client, token, path, login_at))
        except Exception as error:  # noqa: BLE001 (reported as the learner's failure)
            self.run.failure = f"{type(error).__name__}: {error}"[:500]
        return self.run
