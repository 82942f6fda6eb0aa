"""One AI assistant for two clients, built from the seven patterns (notebook
``08_capstone_ai_assistant.ipynb``).

A request's path through the assistant, and the module each step comes from::

    client ──► gateway: Idempotency-Key, bill the answer once ............ 01 api_communication
                 │  uploads ──► queue ──► ingestion workers .............. 03 message_queues
                 │                          chunk ........................ 05 rag_pipeline
                 │                          embed, store per tenant ...... 07 vector_database_design
                 │  questions ──► router: small or large model ........... 04 model_routing
                 │                retrieve, scoped to the asking client .. 07 (and 05)
                 └──► balancer ──► 3 model replicas, streamed tokens ..... 02 load_balancing
                                   continuous batching, TTFT, p99 ........ 06 ai_observability

Nothing here is new: this module composes the seven mechanisms. What it adds is the
system's **settings**, the knobs an operator turns on a game day (:class:`Settings`), and
the few lines that glue one pattern to the next. The HTTP gateway, the replicas and the
dashboard are in ``labsupport/services/capstone.py``; the game day's faults, their evidence
and the checks are in ``labsupport/checks/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labsupport import ai_observability as obs
from labsupport import api_communication as api
from labsupport import load_balancing as lb
from labsupport import model_routing as mr
from labsupport import rag_pipeline as rag
from labsupport import vector_database_design as vdb

# The seven faults of the game day, one per pattern: the name an operator gives each, and
# the notebook that teaches its fix.
FAULTS: dict[str, str] = {
    "lost response": "01_api_communication",
    "slow replica": "02_load_balancing",
    "upload burst": "03_message_queues",
    "everything to the large model": "04_model_routing",
    "chunks cut mid-sentence": "05_rag_pipeline",
    "queueing for batch slots": "06_ai_observability",
    "tenant filter missing": "07_vector_database_design",
}
BALANCERS = ("round-robin", "random", "least-connections", "power of two")
ROUTERS = ("all_large", "all_small", "rules")
CHUNKERS = ("fixed_chars", "sections")
INGEST = ("direct", "queue")
READ_PATHS = ("ask", "related")  # /v1/ask (answers) and /v1/related ("more like this")
MAX_REPLICAS = 6  # the GPU quota: replicas of the model we may run
MAX_BATCH_SLOTS = 32  # KV-cache memory of one replica: sequences it can hold at once


@dataclass(frozen=True)
class Settings:
    """The assistant's settings: every knob the game day lets you turn.

    Units: seconds for times; ``chunk_size`` is characters for ``fixed_chars`` and word
    pieces for ``sections`` (whole sentences packed up to that size).
    """

    # 01 gateway and client
    idempotency_keys: bool = False  # gateway claims the Idempotency-Key before billing
    client_retries: int = 2  # the client app retries a request that timed out
    client_timeout_s: float = 2.0
    # 02 balancer in front of the model replicas
    balancer: str = "round-robin"
    outlier_ejection: bool = False  # eject a replica 3x slower than the others' median
    # 06 the model replicas
    replicas: int = 3
    batch_slots: int = 8  # sequences one replica decodes together (continuous batching)
    # 03 ingestion of uploads
    ingest: str = "direct"  # "direct": the gateway processes the upload in the request
    ingest_workers: int = 20  # threads (direct) or queue consumers (queue)
    visibility_timeout_s: float = 30.0  # SQS's default
    max_receive_count: int | None = None  # None: no dead-letter queue
    # 04 routing
    router: str = "rules"
    max_simple_tokens: int = 35  # rules: longer prompts go to the large model
    # 05 chunking and retrieval
    chunker: str = "sections"
    chunk_size: int = 80
    top_k: int = 5
    # 07 tenant isolation
    tenant_scoped_paths: tuple[str, ...] = READ_PATHS  # read paths that pass the tenant filter
    related_post_filter: bool = False  # drop other tenants' hits after the search

    def with_changes(self, changes: dict[str, Any]) -> Settings:
        """These settings with ``changes`` applied, each checked (ValueError names the
        first bad one)."""
        if not isinstance(changes, dict):
            raise ValueError(f"a fix is a dict of setting -> value; got {type(changes).__name__}")
        names = {f.name: f for f in dataclasses.fields(self)}
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise ValueError(f"no setting named {unknown[0]!r}; the settings are: "
                             + ", ".join(names))
        if "tenant_scoped_paths" in changes and isinstance(changes["tenant_scoped_paths"], list):
            changes = {**changes, "tenant_scoped_paths": tuple(changes["tenant_scoped_paths"])}
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ValueError if a value is of the wrong type or outside what is possible."""
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), getattr(SHIPPED, f.name)
            if f.name == "max_receive_count":
                ok = value is None or (type(value) is int and value >= 1)
            elif type(default) is float:
                ok = type(value) in (int, float) and value > 0
            else:
                ok = type(value) is type(default)
            if not ok:
                raise ValueError(f"{f.name} = {value!r}: expected {type(default).__name__} "
                                 f"like {default!r}")
        choices = {"balancer": BALANCERS, "router": ROUTERS, "chunker": CHUNKERS, "ingest": INGEST}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} = {getattr(self, name)!r}: choose one of {allowed}")
        limits = {"replicas": (1, MAX_REPLICAS), "batch_slots": (1, MAX_BATCH_SLOTS),
                  "ingest_workers": (1, 1000), "client_retries": (0, 10), "top_k": (1, 50),
                  "chunk_size": (10, 10_000), "max_simple_tokens": (1, 10_000)}
        for name, (low, high) in limits.items():
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name} = {getattr(self, name)}: must be {low} to {high}"
                                 + (" (the GPU quota)" if name == "replicas" else "")
                                 + (" (a replica's KV-cache memory)" if name == "batch_slots" else ""))
        bad = [p for p in self.tenant_scoped_paths if p not in READ_PATHS]
        if bad:
            raise ValueError(f"tenant_scoped_paths: {bad[0]!r} is not a read path {READ_PATHS}")


# The assistant as it runs the morning of the game day: sensible routing, chunking and tenant
# scoping, and four weaknesses nobody has met yet (no keys, round-robin, no queue, 3 replicas).
SHIPPED = Settings()


# --- 01: the gateway bills each answer once --------------------------------------------


def bill_answer(ledger: api.Ledger, key: str | None, request: api.ChargeRequest,
                settings: Settings) -> api.Reply:
    """Bill the client for one answer. With ``settings.idempotency_keys`` a retry with the
    same key replays the first reply (notebook 01's claim, charge, finish); without, every
    request that reaches the gateway is billed again."""
    if not settings.idempotency_keys or key is None:
        return api.Reply(201, ledger.charge(request, key=key))
    outcome = ledger.claim(key, api.fingerprint(request.as_dict()))
    if outcome == "replay":
        return ledger.stored_reply(key) or api.Reply(409, {"error": "in flight"})
    if outcome != "claimed":
        return api.Reply(409 if outcome == "in_flight" else 422, {"error": outcome})
    try:
        charge = ledger.charge(request, key=key, processor_key=key)
        reply = api.Reply(201, charge)
        ledger.finish(key, charge, reply)
        return reply
    except BaseException:
        ledger.release(key)
        raise


# --- 02 and 06: the serving tier -------------------------------------------------------

EJECTION = lb.OutlierDetection(latency_factor=3.0, min_requests=5, always_eject_one_host=True)


def balancer(settings: Settings) -> lb.Balancer:
    """The balancer in front of the replicas. With three replicas Envoy's 10% cap ejects
    nobody (int(0.3) = 0), so ejection needs ``always_eject_one_host``; ``min_requests`` is
    5 because a replica 10x slower completes few requests in a 10 s interval."""
    return lb.Balancer(lb.POLICIES[settings.balancer],
                       EJECTION if settings.outlier_ejection else None)


def engine(settings: Settings) -> obs.EngineConfig:
    """One replica's batching engine (06's cost model, ``batch_slots`` sequences at once)."""
    return dataclasses.replace(obs.EngineConfig(), slots=settings.batch_slots)


# --- 04: which model answers ---------------------------------------------------------


def route(settings: Settings, requests: Sequence[mr.RouterRequest]) -> list[str]:
    """"small" or "large" for each request, as the settings' router decides."""
    if settings.router == "rules":
        return mr.rules_router(requests, max_simple_tokens=settings.max_simple_tokens)
    return mr.all_large(requests) if settings.router == "all_large" else mr.all_small(requests)


# --- 03, 05, 07: ingestion -----------------------------------------------------------


def chunk_spans(settings: Settings, text: str) -> list[tuple[int, int]]:
    """Character spans of ``text``'s chunks: fixed windows, or heading sections packed with
    whole sentences up to ``chunk_size`` word pieces (notebook 05's answer)."""
    if settings.chunker == "fixed_chars":
        return rag.fixed_chars(text, settings.chunk_size)
    return [(a + x, a + y) for a, b in rag.heading_sections(text)
            for x, y in rag.pack_units(text[a:b], settings.chunk_size)]


def ingest_one(queue: Any, service: Any, store: Any, *, decode: Callable[[str], Any]) -> None:
    """One ingestion worker's turn (notebook 03): receive, process unless already done,
    apply the effect once, and only then delete. A document that raises is not deleted:
    it comes back after the visibility timeout, and to the dead-letter queue after
    ``max_receive_count`` receives. ``decode`` turns a message body into the document."""
    for message in queue.receive(max_messages=1):
        doc = decode(message.body)
        if not store.is_processed(doc.doc_id):
            text = service.extract_text(doc)  # outside any transaction: it is the slow part
            store.apply_once(doc.doc_id, text)
        queue.delete(message.receipt_handle)  # last: a crash before it means a redelivery


def direct_ingest(uploads: int, workers: int, capacity: int) -> tuple[int, int]:
    """(accepted, rejected) when ``uploads`` arrive at once and the gateway processes each in
    its request: ``workers`` threads, a processor that takes ``capacity`` documents at once.
    Nothing waits: a request beyond the threads gets 503, a call beyond the processor's
    capacity gets "overloaded", and the client app does not retry an upload."""
    accepted = min(uploads, workers, capacity)
    return accepted, uploads - accepted


# --- 07: the two read paths ------------------------------------------------------------


def ask_hits(settings: Settings, stores: dict[str, vdb.TenantStore], tenant: str,
             vector: Sequence[float], embedder: vdb.Embedder) -> list[vdb.Hit]:
    """The documents an answer to the asking client is built from."""
    return _search(settings, "ask", stores, tenant, vector, embedder)


def related_hits(settings: Settings, stores: dict[str, vdb.TenantStore], tenant: str,
                 doc_id: str, vector: Sequence[float], embedder: vdb.Embedder) -> list[vdb.Hit]:
    """"More like this": the documents nearest to ``doc_id`` (its ``vector``), itself left out."""
    return _search(settings, "related", stores, tenant, vector, embedder, exclude=doc_id)


def _search(settings: Settings, path: str, stores: dict[str, vdb.TenantStore], tenant: str,
            vector: Sequence[float], embedder: vdb.Embedder,
            exclude: str | None = None) -> list[vdb.Hit]:
    k = settings.top_k + (exclude is not None)  # one more: the document itself comes first
    if path in settings.tenant_scoped_paths:
        hits = stores[tenant].query_vector(vector, k, embedder=embedder)
    else:
        # The fault: this path asks the shared collection directly, without the tenant
        # filter (what a quick endpoint written against the client library does).
        collection = stores[tenant]._collection
        result = collection.query(query_embeddings=[list(map(float, vector))], n_results=k,
                                  include=["documents", "metadatas", "distances"])
        hits = [vdb.Hit(i.split("/", 1)[1], m["tenant"], float(d), m["title"], t, m)
                for i, m, t, d in zip(result["ids"][0], result["metadatas"][0],
                                      result["documents"][0], result["distances"][0], strict=True)]
        if settings.related_post_filter:  # after the top k: fewer results, never more
            hits = [h for h in hits if h.tenant == tenant]
    return [h for h in hits if h.id != exclude][:settings.top_k]


# --- the whole request path, for the live gateway -------------------------------------


@dataclass
class Answer:
    """What the gateway decided for one question before streaming it."""

    model: str  # "small" or "large"
    hits: list[vdb.Hit]
    prompt: str
    prompt_tokens: int


class Assistant:
    """The glue of one question: route, retrieve (scoped), build the prompt; then pick a
    replica for it and account for its answer.

    ``view`` is the balancer's view of the replicas (02): the gateway updates ``active``
    and the latency EWMA as answers finish, and ``settings.balancer`` picks from it.
    """

    def __init__(self, settings: Settings, stores: dict[str, vdb.TenantStore],
                 embedder: vdb.Embedder, seed: int = 0) -> None:
        import random

        self.settings, self.stores, self.embedder = settings, stores, embedder
        self.view = lb.View(settings.replicas, [1.0] * settings.replicas, random.Random(seed))
        self.policy: Callable[[lb.View], int] = lb.POLICIES[settings.balancer]

    def prepare(self, tenant: str, question: str) -> Answer:
        request = mr.RouterRequest(text=question, prompt_tokens=-(-len(question) // 4),
                                   domain="support")  # ceil(characters / 4), as 04 counts
        model = route(self.settings, [request])[0]
        vector = self.embedder(question)[0]
        hits = ask_hits(self.settings, self.stores, tenant, vector, self.embedder)
        context = "\n".join(f"[{h.id}] {h.title}: {h.text}" for h in hits)
        prompt = f"Answer from the context only.\n{context}\nQuestion: {question}"
        return Answer(model, hits, prompt, max(1, len(prompt) // 4))

    def pick(self) -> int:
        """The replica for the next answer (the caller serialises picks and finishes)."""
        replica = int(self.policy(self.view))
        self.view.active[replica] += 1
        return replica

    def finished(self, replica: int, latency_s: float) -> None:
        """An answer from ``replica`` ended after ``latency_s`` seconds."""
        view = self.view
        view.active[replica] -= 1
        first = view.completed[replica] == 0
        view.latency_ewma[replica] = lb.ewma_update(None if first else view.latency_ewma[replica],
                                                    latency_s, 0.1)
        view.completed[replica] += 1
