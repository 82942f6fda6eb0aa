"""The capstone assistant running for real on 127.0.0.1 (notebook 08_capstone_ai_assistant).

- three model replicas: notebook 06's token-streaming engine, each its own uvicorn server;
- the gateway (FastAPI): ``POST /v1/ask`` (Idempotency-Key, bill once, route, retrieve
  scoped to the client, pick a replica, stream its tokens), ``POST /v1/uploads`` (202, into
  the queue), ``GET /v1/related``, ``GET /metrics`` (Prometheus), ``GET /health``;
- ingestion workers: threads that take uploads from the SQLite queue, chunk, embed and store
  them in the client's tenant-bound Chroma store;
- :func:`run_mixed_load`: two clients asking and uploading at once, over HTTP.

``start_system`` replaces a running system (a re-run cell leaves no second one) and
``stop_system`` stops every server and thread; all are daemon threads, so a kernel restart
stops them too. From a shell: ``python -m labsupport.services.capstone`` (port 8000).
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from labsupport import api_communication as api
from labsupport import capstone as cap
from labsupport import message_queues as mq
from labsupport import servers
from labsupport import vector_database_design as vdb
from labsupport.services import ai_observability as engine_service
from labsupport.services.message_queues_workers import ResultStore

REPLICA_SPEED = 10.0  # simulated seconds per wall second: a 1 s answer streams in 0.1 s
PRICE_CENTS = {"small": 1, "large": 5}  # what the assistant bills a client per answer
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds (wall)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds (wall)


# --- the document stores (shared by the live system and the game day's tenant check) ----


@dataclass
class DocumentStores:
    """Both clients' documents in tenant-bound stores of one shared Chroma collection."""

    stores: dict[str, vdb.TenantStore]
    documents: dict[str, list[vdb.Document]]
    embedder: vdb.Embedder

    def vector_of(self, doc: vdb.Document) -> np.ndarray:
        """The stored vector of ``doc`` (from the embedder's cache: no model call)."""
        return self.embedder([doc.title + ". " + doc.text])[0]


@functools.cache
def document_stores(name: str = "capstone") -> DocumentStores:
    """Every document of both clients (data/tenants), stored once per kernel under
    ``name`` (the shipped vectors: no embedding needed)."""
    from labsupport.explore import vector_database_design as vdb_explore
    from labsupport.services.vector_database_design import default_location

    embedder = vdb.course_embedder()
    vdb_explore.load_seed(embedder)
    docs = vdb.load_documents()
    by_tenant = {t: [d for d in docs if d.tenant == t] for t in vdb.TENANTS}
    stores = {t: vdb.TenantStore(default_location(), t, embedder, name=name) for t in vdb.TENANTS}
    for tenant, store in stores.items():
        store.add(by_tenant[tenant])  # embeds from the seed's cache
    return DocumentStores(stores, by_tenant, embedder)


# --- the gateway's metrics -----------------------------------------------------------------


class GatewayMetrics:
    """What the gateway exports, in a registry of its own (re-run safe)."""

    def __init__(self, replicas: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("assistant_time_to_first_token_seconds",
                              "From the question to the first streamed token.", ["replica"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("assistant_request_duration_seconds",
                                  "From the question to the last token.", ["replica"],
                                  buckets=DURATION_BUCKETS, registry=r)
        self.tokens = Counter("assistant_generated_tokens", "Tokens streamed to clients.",
                              registry=r)
        self.answers = Counter("assistant_answers", "Answers by model.", ["model"], registry=r)
        self.queue_depth = Gauge("assistant_upload_queue_depth",
                                 "Uploads waiting or in flight in the ingestion queue.", registry=r)
        self.ingested = Counter("assistant_documents_ingested", "Uploads stored.", registry=r)
        self.in_flight = Gauge("assistant_replica_in_flight", "Answers streaming per replica.",
                               ["replica"], registry=r)
        for i in range(replicas):  # every series exists from the first scrape
            self.ttft.labels(str(i))
            self.duration.labels(str(i))
            self.in_flight.labels(str(i)).set(0)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


class Ask(BaseModel):
    """The body of POST /v1/ask."""

    tenant: str
    question: str = Field(min_length=1, max_length=2000)
    max_tokens: int = Field(40, ge=1, le=512)  # tokens of the answer


# --- the live system ------------------------------------------------------------------------


@dataclass
class Upload:
    """An upload message: the client's document."""

    doc_id: str
    document: vdb.Document

    @staticmethod
    def from_json(body: str | dict[str, Any]) -> Upload:
        data = json.loads(body) if isinstance(body, str) else body
        doc = vdb.Document(**data)
        return Upload(f"{doc.tenant}/{doc.id}", doc)


class Ingestion:
    """The ingestion 'service' a worker calls: chunk, embed and store one upload."""

    def __init__(self, settings: cap.Settings, stores: dict[str, vdb.TenantStore],
                 metrics: GatewayMetrics) -> None:
        self.settings, self.stores, self.metrics = settings, stores, metrics

    def extract_text(self, upload: Upload) -> str:
        doc = upload.document
        spans = cap.chunk_spans(self.settings, doc.text) or [(0, len(doc.text))]
        chunks = [vdb.Document(**{**asdict(doc), "id": f"{doc.id}#{i}", "text": doc.text[a:b]})
                  for i, (a, b) in enumerate(spans)]
        self.stores[doc.tenant].add(chunks)  # the tenant-bound store (07) embeds them
        self.metrics.ingested.inc()
        return doc.text


@dataclass
class LiveSystem:
    settings: cap.Settings
    folder: Path
    replicas: list[servers.ServerHandle]
    gateway: servers.ServerHandle
    ledger: api.Ledger
    queue: mq.Queue
    stores: DocumentStores
    metrics: GatewayMetrics
    stop_event: threading.Event = field(default_factory=threading.Event)
    workers: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.workers:
            t.join(timeout=5)
        self.gateway.stop()
        for r in self.replicas:
            r.stop()
        shutil.rmtree(self.folder, ignore_errors=True)  # the billing ledger and the queue


_RUNNING: list[LiveSystem] = []


def start_system(settings: cap.Settings = cap.SHIPPED, *, slow_replica: int | None = None,
                 ingest_workers: int = 2) -> LiveSystem:
    """Start three (``settings.replicas``) replicas, the gateway and the ingestion workers.
    ``slow_replica``: that replica's every step costs 10x (it stays up and healthy)."""
    stop_system()
    stores = document_stores()
    folder = Path(tempfile.mkdtemp(prefix="capstone-"))
    replicas = []
    for i in range(settings.replicas):
        config = cap.engine(settings)
        if i == slow_replica:
            config = type(config)(**{**asdict(config), "step_overhead_s": config.step_overhead_s * 10,
                                     "decode_s_per_seq": config.decode_s_per_seq * 10})
        app = engine_service.create_app(config, speed=REPLICA_SPEED)
        replicas.append(servers.serve(app, f"capstone-replica-{i}", lifespan="on"))
    metrics = GatewayMetrics(settings.replicas)
    system = LiveSystem(settings, folder, replicas, None, api.Ledger(folder / "billing.db"),  # type: ignore[arg-type]
                        mq.Queue(folder / "uploads.db", visibility_timeout=30.0), stores, metrics)
    system.gateway = servers.serve(create_gateway(system), "capstone-gateway")
    results = ResultStore(folder / "ingested.db")
    ingestion = Ingestion(settings, stores.stores, metrics)
    worker = functools.partial(cap.ingest_one, decode=Upload.from_json)

    def work() -> None:
        while not system.stop_event.is_set():
            try:
                if not system.queue.depth()["visible"]:
                    time.sleep(0.05)
                    continue
                worker(system.queue, ingestion, results)
            except Exception:  # noqa: BLE001 - the message returns after its visibility timeout
                time.sleep(0.05)

    for i in range(ingest_workers):
        t = threading.Thread(target=work, name=f"capstone-ingest-{i}", daemon=True)
        t.start()
        system.workers.append(t)
    _RUNNING.append(system)
    return system


def stop_system() -> int:
    """Stop every capstone system this kernel started; returns how many."""
    n = 0
    while _RUNNING:
        _RUNNING.pop().stop()
        n += 1
    return n


def create_gateway(system: LiveSystem) -> Any:
    """The assistant's HTTP gateway (see the module docstring)."""
    import httpx
    from fastapi import FastAPI, Header, HTTPException
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    assistant = cap.Assistant(system.settings, system.stores.stores, system.stores.embedder)
    lock = threading.Lock()  # the balancer's view is shared by the gateway's requests
    app = FastAPI(title="capstone assistant gateway")

    def known(tenant: str) -> None:
        if tenant not in system.stores.stores:
            raise HTTPException(404, f"unknown client {tenant!r}; clients: {list(vdb.TENANTS)}")

    @app.post("/v1/ask")
    async def ask(body: Ask, idempotency_key: str | None = Header(None)):
        start = time.perf_counter()  # TTFT from the question: embedding, retrieval, billing
        known(body.tenant)
        answer = await asyncio.to_thread(assistant.prepare, body.tenant, body.question)
        charge = api.ChargeRequest(order_id=f"{body.tenant}:{idempotency_key or uuid.uuid4().hex}",
                                   amount_cents=PRICE_CENTS[answer.model])
        billed = await asyncio.to_thread(cap.bill_answer, system.ledger, idempotency_key,
                                         charge, system.settings)
        if billed.status != 201:
            return JSONResponse(billed.body, status_code=billed.status)
        with lock:
            replica = assistant.pick()
        url = system.replicas[replica].url + "/v1/completions"
        label = str(replica)
        system.metrics.in_flight.labels(label).inc()

        async def stream():
            first = True
            meta = {"model": answer.model, "replica": replica,
                    "sources": [h.id for h in answer.hits], "charge": billed.body.get("charge_id")}
            yield f"event: meta\ndata: {json.dumps(meta)}\n\n"
            try:
                async with httpx.AsyncClient(timeout=60.0) as client, client.stream(
                        "POST", url, json={"prompt_tokens": answer.prompt_tokens,
                                           "max_tokens": body.max_tokens}) as r:
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if first and line != "data: [DONE]":
                            system.metrics.ttft.labels(label).observe(time.perf_counter() - start)
                            first = False
                        if line != "data: [DONE]":
                            system.metrics.tokens.inc()
                        yield line + "\n\n"
            finally:
                elapsed = time.perf_counter() - start
                system.metrics.duration.labels(label).observe(elapsed)
                system.metrics.in_flight.labels(label).dec()
                system.metrics.answers.labels(answer.model).inc()
                with lock:
                    assistant.finished(replica, elapsed)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/uploads", status_code=202)
    async def upload(doc: dict[str, Any]):
        try:
            Upload.from_json(doc)
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, f"not a document: {exc}") from exc
        known(doc["tenant"])
        message_id = await asyncio.to_thread(system.queue.send, doc)
        return {"job_id": message_id}

    @app.get("/v1/related")
    async def related(tenant: str, doc_id: str):
        known(tenant)
        found = system.stores.stores[tenant].get([doc_id])
        if not found:
            raise HTTPException(404, f"{tenant!r} has no document {doc_id!r}")
        vector = system.stores.embedder([found[0].title + ". " + found[0].text])[0]
        hits = cap.related_hits(system.settings, system.stores.stores, tenant, doc_id, vector,
                                system.stores.embedder)
        return [{"id": h.id, "tenant": h.tenant, "title": h.title} for h in hits]

    @app.get("/metrics")
    async def metrics():
        depth = await asyncio.to_thread(system.queue.depth)
        system.metrics.queue_depth.set(depth["visible"] + depth["in_flight"])
        return Response(system.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/health")
    async def health():
        return JSONResponse({"status": "ok", "replicas": [r.url for r in system.replicas]})

    return app


# --- a mixed load from both clients ----------------------------------------------------------


def questions_for(docs: list[vdb.Document], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` questions a client would ask about its own documents."""
    picked = rng.choice(len(docs), n)
    return [f"What does our {docs[i].topic} policy say about {docs[i].title.lower()}?"
            for i in picked]


@dataclass
class MixedLoad:
    """What one run of :func:`run_mixed_load` saw from the client side."""

    answers: int = 0
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)  # wall seconds, per answer
    uploads_accepted: int = 0
    sources_from_other_client: int = 0
    wall_s: float = 0.0


def run_mixed_load(system: LiveSystem, *, questions: int = 60, rate_per_s: float = 12.0,
                   uploads: int = 40, seed: int = 0, scrape_every_s: float = 0.5,
                   on_scrape: Any = None) -> MixedLoad:
    """Two clients ask ``questions`` (Poisson, ``rate_per_s``) and upload ``uploads`` new
    documents at once a second in, over HTTP. The load runs in a thread; this thread scrapes
    ``/metrics`` every ``scrape_every_s`` and calls ``on_scrape(parsed, t_s)`` (the dashboard)."""
    import httpx

    rng = np.random.default_rng(seed)
    tenants = list(system.stores.documents)
    asks = [(tenants[i % 2], q) for i, q in enumerate(
        questions_for(system.stores.documents[tenants[0]] + system.stores.documents[tenants[1]],
                      questions, rng))]
    gaps = rng.exponential(1.0 / rate_per_s, questions)
    new_docs = [vdb.Document(**{**asdict(d), "id": f"upload-{seed}-{i:03d}"})
                for i, d in enumerate(rng.choice(sum(system.stores.documents.values(), []),
                                                 uploads, replace=False))]
    result = MixedLoad()

    async def one_question(client: httpx.AsyncClient, tenant: str, question: str) -> None:
        start = time.perf_counter()
        try:
            async with client.stream("POST", f"{system.url}/v1/ask",
                                     json={"tenant": tenant, "question": question},
                                     headers={"Idempotency-Key": uuid.uuid4().hex}) as r:
                if r.status_code != 200:
                    result.errors.append(f"{r.status_code} {(await r.aread())[:200]!r}")
                    return
                first = True
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and '"sources"' in line:
                        meta = json.loads(line[6:])
                        owners = {d.id for d in system.stores.documents[tenant]}
                        result.sources_from_other_client += sum(
                            s.split("#")[0] not in owners and not s.startswith("upload-")
                            for s in meta["sources"])
                    elif line.startswith("data: {"):
                        if first:
                            result.ttft_s.append(time.perf_counter() - start)
                            first = False
                        result.tokens += 1
                result.answers += 1
        except httpx.HTTPError as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")

    async def upload_all(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)
        replies = await asyncio.gather(*(client.post(f"{system.url}/v1/uploads", json=asdict(d))
                                         for d in new_docs), return_exceptions=True)
        result.uploads_accepted = sum(getattr(r, "status_code", 0) == 202 for r in replies)

    async def main() -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            tasks = [asyncio.create_task(upload_all(client))]
            for (tenant, question), gap in zip(asks, gaps, strict=True):
                await asyncio.sleep(gap)
                tasks.append(asyncio.create_task(one_question(client, tenant, question)))
            await asyncio.gather(*tasks)

    start = time.perf_counter()
    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    with httpx.Client(timeout=10.0) as scraper:
        while True:
            done = not thread.is_alive()
            if on_scrape is not None:
                text = scraper.get(f"{system.url}/metrics").text
                on_scrape(engine_service.parse_metrics(text), time.perf_counter() - start)
            if done:
                break
            thread.join(scrape_every_s)
    result.wall_s = time.perf_counter() - start
    return result


def main() -> None:  # pragma: no cover - a shell entry point
    import argparse

    parser = argparse.ArgumentParser(description="The capstone assistant on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    system = start_system()
    system.gateway.stop()
    system.gateway = servers.serve(create_gateway(system), "capstone-gateway", port=args.port)
    print(f"gateway on {system.url}: try\n  curl -N -X POST {system.url}/v1/ask "
          "-H 'Idempotency-Key: k1' -H 'Content-Type: application/json' "
          "-d '{\"tenant\": \"northwind\", \"question\": \"How many vacation days?\"}'")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        stop_system()


if __name__ == "__main__":
    main()
