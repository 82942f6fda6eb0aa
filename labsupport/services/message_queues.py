"""Services for ``03_message_queues.ipynb``: the FastAPI front door, a load generator,
and whole pipeline runs (front door, queue, workers) for the demos and the checker.

- :func:`create_app` / :func:`serve`: the upload API (``202 Accepted`` and a job id, job
  status, and a synchronous endpoint for comparison) on 127.0.0.1 and a free port;
- :func:`fire_requests`: 500 concurrent HTTP uploads, one connection each;
- :func:`run_pipeline`: documents through a fresh queue and worker threads on a
  simulated clock, with the queue depth sampled; :class:`PipelineConfig` is what the
  exercise asks you to choose.

Documents, the result store, the processing service, the simulated clock and worker
processes live in ``labsupport.services.message_queues_workers`` (a worker process
imports only that); their names are re-exported here. From the shell::

    python -m labsupport.services.message_queues --port 8000        # the front door
    python -m labsupport.services.message_queues_workers --db jobs.db  # one worker process
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from labsupport import message_queues as mq
from labsupport import servers
from labsupport.message_queues import Queue
from labsupport.services.message_queues_workers import (  # noqa: F401 - re-exported
    CORRUPT_MARKER,
    CalledInsideTransaction,
    CorruptDocument,
    Document,
    FaultPlan,
    Hung,
    PoolStats,
    ProcessingService,
    ResultStore,
    ServiceOverloaded,
    StoreTransaction,
    VirtualTime,
    Worker,
    WorkerCrashed,
    kill_hard,
    naive_worker,
    run_workers,
    spawn_worker_process,
)

# --- a whole pipeline run -------------------------------------------------------------


@dataclass
class PipelineConfig:
    """What the exercise asks you to choose."""

    workers: int
    visibility_timeout: float  # seconds
    max_receive_count: int | None  # None: no dead-letter queue
    worker: Worker  # one turn: receive at most one message, process it, delete it


@dataclass
class RunResult:
    """Everything measured in one :func:`run_pipeline`. Times are simulated seconds from
    the first send."""

    n_docs: int
    processing_time: float
    workers: int
    sent_at: dict[str, float]  # doc_id -> time sent
    completed_at: dict[str, float]  # doc_id -> time its message was deleted
    drained_at: float | None  # None: still not empty at the deadline
    depth: np.ndarray  # columns: t, visible, in flight
    effects: Counter  # doc_id -> effects applied
    effect_texts: list[tuple[str, str]]  # every effect: (doc_id, text)
    dead_lettered: list[str]  # doc_ids in the DLQ
    left_in_queue: int
    stats: PoolStats
    service: ProcessingService
    accept: LoadResult | None = None  # when the docs came in over HTTP
    queued: dict[str, int] = field(default_factory=dict)  # doc_id -> receive count, of the
    # messages still in the main queue at the end (0: never received)
    hung: str = ""  # why the run stopped early, if a worker never gave its turn back

    @property
    def ideal_drain(self) -> float:
        """ceil(N / workers) x processing time: the best any schedule can do."""
        return math.ceil(self.n_docs / self.workers) * self.processing_time

    def summary(self) -> str:
        drained = (f"drained in {self.drained_at:.2f} s (ideal {self.ideal_drain:.2f} s)"
                   if self.drained_at is not None else
                   f"NOT drained: {self.left_in_queue} messages left")
        dup = sum(1 for c in self.effects.values() if c > 1)
        return (f"{self.n_docs} docs, {self.workers} workers: {drained}; "
                f"{sum(self.service.calls.values())} service calls, "
                f"{len(self.completed_at)} deleted, {len(self.dead_lettered)} dead-lettered, "
                f"{dup} docs with duplicate effects, {len(self.stats.crashes)} crashes")


def make_documents(n: int, poison: set[int] = frozenset(), prefix: str = "doc") -> list[Document]:
    """``n`` documents named ``doc-0000``...; the indices in ``poison`` are corrupt."""
    docs = []
    for i in range(n):
        content = (CORRUPT_MARKER if i in poison else "") + f"quarterly report {i}"
        docs.append(Document(f"{prefix}-{i:04d}", f"{prefix}-{i:04d}.pdf", content))
    return docs


def faults_by_id(faults: FaultPlan, job_of: dict[str, str]) -> FaultPlan:
    """The same plan, with document names replaced by their doc ids (the job ids the
    front door gave, over HTTP)."""
    def ids(names: set[str]) -> set[str]:
        return {job_of.get(n, n) for n in names}
    return FaultPlan(ids(faults.in_service), ids(faults.after_commit), ids(faults.before_delete))


def run_pipeline(config: PipelineConfig, docs: list[Document], *, processing_time: float,
                 capacity: int = 20, faults: FaultPlan | None = None,
                 arrival_rate: float | None = None, deadline: float | None = None,
                 via_http: bool = False, sample_interval: float = 0.02,
                 watchdog: float = 30.0) -> RunResult:
    """Run ``docs`` through a fresh queue and ``config.workers`` workers on a simulated
    clock (see :class:`VirtualTime`): real SQLite, real worker code, simulated waiting.

    ``arrival_rate`` (documents per simulated second) spaces the sends evenly; None sends
    them all at once (the 2pm burst). ``via_http`` sends them as concurrent HTTP uploads
    to the front door instead (``result.accept`` holds what each upload got).
    ``deadline`` (simulated seconds, default 3x the ideal drain time plus 2 s) ends a run
    that does not drain.
    """
    vt = VirtualTime(watchdog)
    tmp = tempfile.mkdtemp(prefix="mq-run-")
    dlq = None
    queue_path, store_path = os.path.join(tmp, "queue.db"), os.path.join(tmp, "store.db")
    if config.max_receive_count is not None:
        dlq = Queue(queue_path, "jobs-dlq", visibility_timeout=0, clock=vt, sleep=vt.sleep)
    queue = Queue(queue_path, "jobs", visibility_timeout=config.visibility_timeout,
                  dead_letter_queue=dlq, max_receive_count=config.max_receive_count,
                  clock=vt, sleep=vt.sleep)
    ideal = math.ceil(len(docs) / max(1, min(config.workers, capacity))) * processing_time
    deadline = 3 * ideal + 2.0 if deadline is None else deadline
    accept = None
    sent_at: dict[str, float] = {}
    if via_http:
        server = serve(queue_path, queue=queue, processing_time=processing_time,
                       name="pipeline-run")
        try:
            # A checker's run: a busy machine may answer slowly, never wrongly (the notebook's
            # own load test keeps the 10 s timeout a user would see).
            accept = fire_requests(server.url + "/uploads", docs, timeout=120.0)
        finally:
            server.stop()
        sent_at = dict.fromkeys(accept.accepted_at, 0.0)  # the server named the jobs
    if faults is not None:
        faults = faults_by_id(faults, accept.job_of if accept else {d.name: d.doc_id for d in docs})
    store = ResultStore(store_path)
    service = ProcessingService(processing_time, capacity, sleep=vt.sleep, faults=faults,
                                store=store)
    if faults is not None:
        plan = faults
        store.on_commit = lambda ids: [plan.crash("after_commit", i) for i in sorted(ids)]
    samples: list[tuple[float, int, int]] = []
    drained: list[float] = []
    sending = [True] if not via_http else []  # non-empty while the sender has documents left

    def sender() -> None:  # documents arrive on the simulated clock
        for i, doc in enumerate(docs):
            if arrival_rate:
                vt.sleep(max(0.0, i / arrival_rate - vt.now))
            queue.send(doc.to_json())
            sent_at[doc.doc_id] = vt.now
        sending.clear()

    def monitor() -> None:  # samples the depth; notes when the queue is empty
        while not drained:
            d = queue.depth()
            samples.append((vt.now, d["visible"] + d["delayed"], d["in_flight"]))
            if not sending and sum(d.values()) == 0:
                drained.append(vt.now)
            vt.sleep(sample_interval)

    if not via_http:
        vt.spawn(sender, name="mq-sender")
    view, stats = run_workers(vt, queue, config.worker, workers=config.workers,
                              service=service, store=store, faults=faults)
    vt.spawn(monitor, name="mq-monitor")
    hung = ""
    try:
        vt.run(until=deadline, stop=lambda: bool(drained))
    except Hung as exc:
        hung = str(exc)
    finally:
        vt.shutdown()
    if drained:  # the exact time: the last delete, or the last move to the DLQ
        moved = queue.db.conn().execute("SELECT MAX(visible_at) FROM messages WHERE queue = ?",
                                        ("jobs-dlq",)).fetchone()[0]
        drained[0] = max([*view.deleted_at.values(), moved or 0.0])
    left = len(queue)
    queued = {Document.from_json(m["body"]).doc_id: int(m["receive_count"]) for m in queue.peek()}
    dead = [Document.from_json(m["body"]).doc_id for m in dlq.peek()] if dlq else []
    effects, texts = store.effects_per_doc(), store.effects()
    depth = np.array(samples, dtype=float).reshape(-1, 3)
    for handle in (queue, dlq, store):
        if handle is not None:
            handle.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return RunResult(len(docs), processing_time, config.workers, sent_at,
                     dict(view.deleted_at), drained[0] if drained else None, depth, effects,
                     texts, dead, left, stats, service, accept, queued, hung)


# --- the front door (FastAPI) ---------------------------------------------------------


def create_app(queue: Queue, store: ResultStore, *, processing_time: float = 0.1,
               sync_limit: int = 20, sync_timeout: float = 1.0, sync_max_waiting: int = 200):
    """The upload API.

    - ``POST /uploads`` enqueues the document and answers ``202 Accepted`` with a job id.
    - ``GET /jobs/{job_id}``: queued, processing, done or dead-lettered (404 if unknown).
    - ``POST /process-sync`` processes inline, ``sync_limit`` at a time: a request that
      finds ``sync_max_waiting`` others waiting is rejected at once (503); one that waits
      longer than ``sync_timeout`` seconds for a slot times out (504).
    """
    from fastapi import FastAPI, HTTPException, Response
    from pydantic import BaseModel, Field

    class Upload(BaseModel):
        name: str = Field(min_length=1, max_length=200)
        content: str = Field(max_length=1_000_000)

    app = FastAPI(title="Document uploads (03_message_queues)")
    state = {"waiting": 0}
    slots: dict[str, asyncio.Semaphore] = {}  # created inside the server's event loop

    async def upload(doc: Upload) -> dict[str, str]:
        # The insert takes about 0.1 ms, so it runs on the event loop; a plain def would
        # hand each of 500 requests to a pool of 40 threads, which costs more than the
        # insert. A slow call (a remote database) would belong in that thread pool.
        job_id = uuid.uuid4().hex[:16]
        body = Document(job_id, doc.name, doc.content).to_json()
        size = len(body.encode("utf-8", "surrogatepass"))  # SQS counts bytes
        if size > mq.SQS_MESSAGE_MAX_BYTES:
            raise HTTPException(413, f"{size:,} bytes as a message; SQS takes at most "
                                     f"{mq.SQS_MESSAGE_MAX_BYTES:,}")
        try:
            queue.send(body)
        except mq.SQSError as err:  # a character SQS refuses
            raise HTTPException(422, str(err)) from None
        return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}

    def job_status(job_id: str) -> dict[str, str]:
        if store.is_processed(job_id):
            return {"job_id": job_id, "status": "done"}
        found = _find_job(queue, job_id)
        if found is not None:
            return {"job_id": job_id, "status": found}
        if queue.dead_letter_queue and _find_job(queue.dead_letter_queue, job_id):
            return {"job_id": job_id, "status": "dead-lettered"}
        raise HTTPException(404, f"unknown job {job_id}")

    async def process_sync(doc: Upload, response: Response) -> dict[str, str]:
        sem = slots.setdefault("sem", asyncio.Semaphore(sync_limit))
        if sem.locked() and state["waiting"] >= sync_max_waiting:
            raise HTTPException(503, "busy: try again later", headers={"Retry-After": "1"})
        state["waiting"] += 1
        try:
            await asyncio.wait_for(sem.acquire(), sync_timeout)
        except TimeoutError:
            raise HTTPException(504, f"no processing slot within {sync_timeout:g} s") from None
        finally:
            state["waiting"] -= 1
        try:
            await asyncio.sleep(processing_time)  # inline processing, holding the slot
        finally:
            sem.release()
        return {"status": "done", "name": doc.name}

    # This module uses postponed annotations (strings); FastAPI resolves strings in the
    # module's globals, where the local Upload model is not, so give it the classes.
    for endpoint in (upload, process_sync):
        endpoint.__annotations__["doc"] = Upload
    process_sync.__annotations__["response"] = Response
    app.post("/uploads", status_code=202)(upload)
    app.get("/jobs/{job_id}")(job_status)
    app.post("/process-sync")(process_sync)
    return app


def _find_job(queue: Queue, job_id: str) -> str | None:
    """Job status from the queue table (the job id is inside the message body)."""
    row = queue.db.conn().execute(
        "SELECT receive_count, visible_at FROM messages WHERE queue = ? AND "
        "json_extract(body, '$.doc_id') = ?", (queue.name, job_id)).fetchone()
    if row is None:
        return None
    return "processing" if row[0] > 0 and row[1] > queue.clock() else "queued"


# The front door runs through labsupport/servers.py (shared with notebooks 01 and 06):
# uvicorn in a background thread on a free loopback port, registered by name.
ServerHandle = servers.ServerHandle
_SERVERS = servers.RUNNING  # name -> running server; a re-run stops the old one


def serve(db_path: str | os.PathLike, *, queue: Queue | None = None,
          store: ResultStore | None = None, processing_time: float = 0.1,
          sync_limit: int = 20, sync_timeout: float = 1.0, sync_max_waiting: int = 200,
          name: str = "front-door") -> ServerHandle:
    """Start the front door on 127.0.0.1 and a free port. Starting a server with the
    same ``name`` again stops the previous one first (a re-run cell is safe)."""
    stop_server(name)
    queue = Queue(db_path, "jobs") if queue is None else queue  # an empty Queue is falsy
    store = ResultStore(db_path) if store is None else store
    app = create_app(queue, store, processing_time=processing_time, sync_limit=sync_limit,
                     sync_timeout=sync_timeout, sync_max_waiting=sync_max_waiting)
    # a deep accept backlog and short keep-alive: 500 clients connect at once
    return servers.serve(app, name, backlog=2048, timeout_keep_alive=5, access_log=False)


def stop_server(name: str = "front-door") -> None:
    servers.stop(name)


def stop_all_servers() -> None:
    servers.stop_all()


# --- load over HTTP -------------------------------------------------------------------


@dataclass
class LoadResult:
    """Outcomes of concurrent HTTP requests. Latencies in seconds."""

    latencies: dict[str, list[float]]  # outcome -> latencies
    accepted_at: dict[str, float]  # job id -> time.time() of the 202 answer
    job_of: dict[str, str]  # document name -> job id
    wall: float  # seconds from the first request to the last answer

    def count(self, outcome: str) -> int:
        return len(self.latencies.get(outcome, []))

    def p99(self, outcome: str | None = None) -> float:
        values = (sum(self.latencies.values(), []) if outcome is None
                  else self.latencies.get(outcome, []))
        return float(np.percentile(values, 99)) if values else float("nan")

    def summary(self) -> str:
        parts = [f"{k}: {len(v)}" for k, v in sorted(self.latencies.items())]
        return f"{', '.join(parts)}; p99 {self.p99() * 1000:.0f} ms; wall {self.wall:.2f} s"


async def http_post_json(host: str, port: int, path: str, payload: dict,
                         timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on its own connection (``Connection: close``); returns the status
    code and the body. Raises TimeoutError after ``timeout`` seconds.

    Why not httpx here: on this course's 2-core machines its client spent seconds of CPU
    managing 500 concurrent connections, in the same process as the server, and that
    time would have been measured as server latency. This is plain HTTP on a socket.
    """
    async def exchange() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            body = json.dumps(payload).encode()
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
            raw = await reader.read()  # the server closes the connection after answering
        finally:
            writer.close()
        status_line, _, rest = raw.partition(b"\r\n")
        _, _, content = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), content

    return await asyncio.wait_for(exchange(), timeout)


def fire_requests(url: str, docs: list[Document], timeout: float = 10.0) -> LoadResult:
    """POST every document to ``url`` at once (one connection each, as 500 users would)
    and classify the answers: ``accepted`` (2xx), ``rejected`` (503 and other errors),
    ``timed_out`` (504, or no answer within ``timeout`` seconds). Runs its own event
    loop in a thread, so it works inside Jupyter, whose loop is already running."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    latencies: dict[str, list[float]] = {}
    accepted_at: dict[str, float] = {}
    job_of: dict[str, str] = {}

    async def one(doc: Document) -> None:
        start = time.perf_counter()
        try:
            status, content = await http_post_json(
                host, port, path, {"name": doc.name, "content": doc.content}, timeout)
            outcome = ("accepted" if 200 <= status < 300 else
                       "timed_out" if status == 504 else "rejected")
            if status == 202:
                job = json.loads(content)["job_id"]
                accepted_at[job] = time.time()
                job_of[doc.name] = job
        except TimeoutError:
            outcome = "timed_out"
        except (OSError, ValueError, IndexError):
            outcome = "rejected"  # connection refused or reset, or a garbled answer
        latencies.setdefault(outcome, []).append(time.perf_counter() - start)

    async def main() -> None:
        await asyncio.gather(*(one(d) for d in docs))

    started = time.perf_counter()
    error: list[BaseException] = []

    def runner() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=runner, name="mq-load")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return LoadResult(latencies, accepted_at, job_of, time.perf_counter() - started)


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Serve the front door from the shell, with its queue in a SQLite file."""
    parser = argparse.ArgumentParser(prog="python -m labsupport.services.message_queues",
                                     description="Serve the upload front door of "
                                                 "03_message_queues on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", default="jobs.db", help="the queue's SQLite file")
    parser.add_argument("--processing-time", type=float, default=0.1,
                        help="seconds per document of /process-sync")
    args = parser.parse_args(argv)
    import uvicorn

    db = os.path.abspath(args.db)
    app = create_app(Queue(db, "jobs"), ResultStore(db), processing_time=args.processing_time)
    print(f"front door on http://127.0.0.1:{args.port}  (queue in {db})")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
