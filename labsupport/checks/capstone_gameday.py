"""The game day of notebook 08_capstone_ai_assistant: seven faults, what an operator sees of
each, and the same evidence measured again once a fix is applied.

Every number here comes from a simulator or a count, never from the wall clock, so a
verdict is the same on an idle laptop and on a busy classroom hub:

| fault | evidence (and what measures it) |
|---|---|
| lost response | charges per question (the gateway's ledger, 01's SQLite, real) |
| slow replica | p99 per replica (02's balancer simulator, 20,000 requests) |
| upload burst | jobs lost (03's queue, real SQLite and worker code on a simulated clock) |
| everything to the large model | cost per day vs the routing oracle (04's cost model) |
| chunks cut mid-sentence | recall on the handbook's held-out gold questions (05) |
| queueing for batch slots | queue depth, TTFT p99, CPU (06's batching engine simulated) |
| tenant filter missing | cross-tenant results (07's tenant-bound Chroma store, real) |
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labsupport import ai_observability as obs
from labsupport import api_communication as api
from labsupport import capstone as cap
from labsupport import load_balancing as lb
from labsupport import model_routing as mr
from labsupport import rag_pipeline as rag

# --- budgets: the invariants every fix must restore ------------------------------------

P99_BUDGET_S = 3.0  # answers at the balancer: 9am p99 is 2.3 s (mean answer 0.5 s)
TTFT_P99_BUDGET_S = 3.0  # first token, at the replica, over two simulated minutes
MAX_UTILISATION = 0.85  # offered load / what the replicas serve: headroom for bursts
TPOT_P50_BUDGET_S = 0.05  # time per further token: 20 tokens/s, faster than people read
COST_VS_ORACLE = 1.15  # routing: at most 15% above the oracle's cost per day
MIN_QUALITY = 0.97  # routing: answers as good as the large model's, within 3 points
RECALL_TARGET = 0.90  # RAG: mean recall of the gold answer spans (05's target)
MIN_IOU = 0.06  # RAG: 1.2x the best fixed-size chunker's IoU (0.050): not just more text

# --- the fault environments (what the world does to the assistant) -------------------

ANSWER_MEAN_S = 0.5  # a healthy replica's mean answer time, seconds
REPLICA_WORKERS = 4  # answers one replica works on at once in the balancer model
BASE_RATE = 3.0  # questions per second at 9am (three replicas at 12% load)
BURST_CAPACITY = 20  # documents the processor handles at once (03)
BURST_PROCESSING_S = 0.25  # per document, simulated seconds


@dataclass(frozen=True)
class Incident:
    """One fault as the game day injects it."""

    fault: str = field(repr=False)  # one of cap.FAULTS: what the learner must name
    page: str  # the alert or the complaint that starts the incident
    settings: cap.Settings  # the settings running when it happens (a bad deploy shows here)
    environment: dict[str, Any] = field(default_factory=dict)  # the fault's parameters


DEPLOYS: dict[str, dict[str, Any]] = {  # the bad deploys behind three of the faults
    "everything to the large model": {"router": "all_large"},
    "chunks cut mid-sentence": {"chunker": "fixed_chars", "chunk_size": 2000},
    "tenant filter missing": {"tenant_scoped_paths": ("ask",)},
}
PAGES = {
    "lost response": "Finance: Northwind's invoice has more answers billed than questions asked.",
    "slow replica": "Alert: answer latency p99 above 3 s since the noon peak (traffic x3). "
                    "No errors, every replica passes its health check.",
    "upload burst": "Support: Bluefin uploaded its new policies at 14:00 and most of them "
                    "never appear in answers. The upload page showed no error they noticed.",
    "everything to the large model": "Finance: the model bill rose 40% this week; traffic is "
                                     "flat.",
    "chunks cut mid-sentence": "Support: HR answers leave out half the policy or quote the "
                               "wrong one; the model and the database are healthy.",
    "queueing for batch slots": "Support: 'the assistant feels slow to start answering'. "
                                "CPU about 20%, no errors.",
    "tenant filter missing": "Security: a Northwind user saw a Bluefin document under "
                             "'related documents'.",
}


def incident(fault: str, seed: int = 0) -> Incident:
    """The incident of ``fault`` (a name of cap.FAULTS); ``seed`` varies its details (which
    replica slows, which answers are lost, ...) for the final check's unseen days."""
    rng = np.random.default_rng(seed)
    settings = cap.SHIPPED.with_changes(DEPLOYS.get(fault, {}))
    env: dict[str, Any] = {"seed": seed}
    if fault == "lost response":
        env.update(questions=40, lose_every=int(rng.integers(4, 7)))
    elif fault == "slow replica":
        env.update(traffic=float(rng.uniform(2.8, 3.2)), slow=int(rng.integers(0, 3)), speed=0.1)
    elif fault == "upload burst":
        env.update(uploads=int(rng.integers(450, 551)))
    elif fault == "queueing for batch slots":
        env.update(load=1.3)  # 1.3x what three 8-slot replicas serve (notebook 06's incident)
    return Incident(fault, PAGES[fault], settings, env)


# --- the evidence of each fault -----------------------------------------------------------

Evidence = dict[str, Any]  # metric name -> value (numbers), plus "logs": list[str]


def lost_response(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """Questions billed through the gateway's real ledger (SQLite). Every ``lose_every``-th
    answer's response is lost after the charge commits; the client times out and retries
    with the same Idempotency-Key, up to ``client_retries`` times."""
    logs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="capstone-ledger-") as folder:
        ledger = api.Ledger(Path(folder) / "billing.db")
        unanswered = 0
        for i in range(env["questions"]):
            tenant = ("northwind", "bluefin")[i % 2]
            request = api.ChargeRequest(order_id=f"{tenant}-q{i:03d}", amount_cents=2)
            key = f"answer-{tenant}-{i:03d}"
            lost = i % env["lose_every"] == 0
            cap.bill_answer(ledger, key, request, settings)
            if lost:
                logs.append(f"POST /v1/ask key={key} -> 201; client read timeout after "
                            f"{settings.client_timeout_s:g} s")
                if settings.client_retries == 0:
                    unanswered += 1
                    logs.append(f"  client gave up on {key}: the user saw an error")
                    continue
                reply = cap.bill_answer(ledger, key, request, settings)
                logs.append(f"  retry key={key} -> {reply.status}")
        charges = ledger.charges()
    per_question: dict[str, int] = {}
    for c in charges:
        per_question[c["order_id"]] = per_question.get(c["order_id"], 0) + 1
    return {"questions": env["questions"], "charges": len(charges),
            "questions billed twice": sum(n > 1 for n in per_question.values()),
            "max charges per question": max(per_question.values(), default=0),
            "questions unanswered": unanswered, "logs": logs[:8]}


def slow_replica(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """p99 per replica through the balancer at ``traffic`` times the 9am rate, with replica
    ``slow`` at ``speed`` (0.1: ten times slower, still passing health checks)."""
    n = settings.replicas
    cluster = lb.Cluster(n_servers=n, arrival_rate=BASE_RATE * env["traffic"],
                         service=lb.Exponential(ANSWER_MEAN_S), workers=REPLICA_WORKERS)
    cluster = cluster.with_slow_server(env["slow"] % n, env["speed"])
    result = lb.simulate(cluster, cap.balancer(settings), 20_000, seed=env["seed"], warmup=2_000)
    out: Evidence = {"answers": int(np.sum(result.server >= 0)), "p99 latency (s)": float(result.percentile(99)),
                     "p50 latency (s)": float(result.percentile(50)),
                     "dropped": int(result.dropped), "ejections": len(result.ejections)}
    for s, share in enumerate(result.share()):
        out[f"replica {s}: p99 (s)"] = float(result.percentile(99, s))
        out[f"replica {s}: share of answers"] = float(share)
    out["logs"] = [f"health check replica-{s}: 200 OK" for s in range(n)]
    return out


def upload_burst(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """``uploads`` documents at once (03's 2pm, with its crashes and two poison documents)."""
    from labsupport.checks import message_queues as mq_checks
    from labsupport.services import message_queues as mqs
    from labsupport.services.message_queues_workers import Document

    sc = dataclasses.replace(mq_checks.SCENARIO, uploads=env["uploads"], seed=env["seed"] + 3,
                             capacity=BURST_CAPACITY, processing_time=BURST_PROCESSING_S)
    docs, poison, faults = mq_checks.scenario_faults(sc)
    if settings.ingest == "direct":
        accepted, rejected = cap.direct_ingest(sc.uploads, settings.ingest_workers, sc.capacity)
        return {"uploads": sc.uploads, "accepted": accepted, "rejected (503)": rejected,
                "jobs lost": rejected, "processed twice": 0, "queue depth at the end": 0,
                "dead-lettered": 0, "drain time (s)": sc.processing_time,
                "logs": [f"POST /v1/uploads -> 503 Service Unavailable ({rejected} times)",
                         "processor: 'more than 20 concurrent calls'"]}
    config = mqs.PipelineConfig(
        workers=settings.ingest_workers, visibility_timeout=settings.visibility_timeout_s,
        max_receive_count=settings.max_receive_count,
        worker=functools.partial(cap.ingest_one, decode=Document.from_json))
    run = mqs.run_pipeline(config, docs, processing_time=sc.processing_time,
                           capacity=sc.capacity, faults=faults, deadline=sc.deadline)
    dead = set(run.dead_lettered)
    processed = sum(1 for d in docs if run.effects.get(d.doc_id, 0) >= 1
                    and d.doc_id not in run.queued and d.doc_id not in dead)
    lost = sc.uploads - processed - len(dead) - run.left_in_queue
    return {"uploads": sc.uploads, "accepted": sc.uploads, "rejected (503)": 0,
            "jobs lost": lost + run.left_in_queue, "processed twice":
            sum(1 for c in run.effects.values() if c > 1),
            "queue depth at the end": run.left_in_queue, "dead-lettered": len(dead),
            "poison documents": len(poison),
            "drain time (s)": run.drained_at if run.drained_at is not None else math.inf,
            "logs": [run.summary(), f"processor overloaded {run.service.overloaded} times"]}


@functools.cache
def _routing_split() -> tuple[mr.Request, ...]:
    return tuple(mr.load_requests("test"))


def routing(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """Cost per day, quality and the large model's share on the test split (resampled for
    an unseen day when ``env`` has ``resample``)."""
    requests = list(_routing_split())
    if env.get("resample"):
        rng = np.random.default_rng(env["seed"])
        requests = [requests[i] for i in rng.integers(0, len(requests), len(requests))]
    mine = mr.evaluate(requests, cap.route(settings, mr.router_view(requests)))
    oracle = mr.evaluate(requests, mr.oracle_router(requests))
    return {"cost per day (USD)": mine.daily_cost_usd, "oracle cost per day (USD)":
            oracle.daily_cost_usd, "share to the large model": mine.share_large,
            "quality": mine.quality, "p95 latency (s)": mine.p95_latency_s,
            "logs": [f"routing: {mine.share_large:.0%} of "
                     f"{mr.DAILY_REQUESTS:,} requests a day to the large model"]}


def chunking(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """Recall and IoU of the top ``top_k`` chunks on the handbook's held-out gold questions,
    and how many chunks end in the middle of a sentence."""
    from labsupport.explore import rag_pipeline as rag_explore

    docs, questions = rag_explore.load_corpus("handbook")
    chunks = [c for d in docs for c in rag.make_chunks(d, cap.chunk_spans(settings, d.text))]
    result = rag_explore.evaluate("capstone", chunks, questions, _rag_cache(), k=settings.top_k)
    by_doc = {d.name: d.text for d in docs}
    cut = sum(1 for c in chunks if _ends_mid_sentence(by_doc[c.doc], c.end))
    return {"chunks": len(chunks), "chunks ending mid-sentence": cut,
            "share ending mid-sentence": cut / max(1, len(chunks)),
            "recall on gold questions": result.recall, "IoU on gold questions": result.iou,
            "logs": [f"ingestion: {len(chunks)} chunks of {len(docs)} handbook pages"]}


def _ends_mid_sentence(text: str, end: int) -> bool:
    """True when a chunk ending at ``end`` stops inside a sentence: the last character
    before it is not a sentence end and the text does not go on with a new line."""
    before, after = text[:end].rstrip(), text[end:]
    return bool(before) and before[-1] not in ".!?:|" and after.strip() != "" \
        and not after.lstrip(" \t").startswith("\n")


@functools.cache
def _rag_cache() -> Any:
    return rag.default_cache()


def batch_queueing(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """Two simulated minutes of the serving tier at ``load`` times three 8-slot replicas'
    capacity, spread evenly over ``settings.replicas`` replicas: utilisation, queue depth,
    TTFT, TPOT and modelled host CPU."""
    from labsupport.services.ai_observability import scrapes_from_simulation

    total = env["load"] * 3 * obs.capacity_estimate(obs.EngineConfig())  # requests/s
    capacity = settings.replicas * obs.capacity_estimate(cap.engine(settings))  # requests/s
    workload = obs.make_workload(total / settings.replicas, 120.0, env["seed"] + 7)
    sim = obs.simulate(workload, cap.engine(settings))
    s = obs.summarize(sim.records)
    scrapes = scrapes_from_simulation(sim, 1.0)
    return {"requests per second (all replicas)": total,
            "what the replicas serve (requests per second)": capacity,
            "utilisation": total / capacity,
            "peak queue depth (per replica)": max(x[obs.WAITING_METRIC] for x in scrapes),
            "TTFT p99 (s)": s["ttft_p99_s"], "TTFT p50 (s)": s["ttft_p50_s"],
            "TPOT p50 (s)": s["tpot_p50_s"], "tokens per second (per replica)": s["tokens_per_s"],
            "CPU (%)": float(np.mean([x["cpu_percent"] for x in scrapes])), "errors": 0,
            "logs": ["no errors in the last hour"]}


def tenant_isolation(settings: cap.Settings, env: dict[str, Any]) -> Evidence:
    """Both read paths, for every document of both clients used as the query: how many
    results belong to the other client, and how many queries return fewer than ``top_k``."""
    from labsupport.services import capstone as services

    system = services.document_stores()
    leaks = {p: 0 for p in cap.READ_PATHS}
    short = 0
    rng = np.random.default_rng(env["seed"])
    for tenant, docs in system.documents.items():
        for i in rng.choice(len(docs), 40, replace=False):
            vector = system.vector_of(docs[i])
            for path, hits in (
                    ("ask", cap.ask_hits(settings, system.stores, tenant, vector, system.embedder)),
                    ("related", cap.related_hits(settings, system.stores, tenant, docs[i].id,
                                                 vector, system.embedder))):
                leaks[path] += sum(h.tenant != tenant for h in hits)
                short += len(hits) < settings.top_k
    queries = 40 * len(system.documents)
    return {"queries per path": queries, "cross-tenant results (ask)": leaks["ask"],
            "cross-tenant results (related)": leaks["related"],
            "queries with fewer than top_k results": short,
            "logs": [f"GET /v1/related: {leaks['related']} results from the other client"
                     if leaks["related"] else "GET /v1/related: OK"]}


EVIDENCE: dict[str, Callable[[cap.Settings, dict[str, Any]], Evidence]] = {
    "lost response": lost_response, "slow replica": slow_replica, "upload burst": upload_burst,
    "everything to the large model": routing, "chunks cut mid-sentence": chunking,
    "queueing for batch slots": batch_queueing, "tenant filter missing": tenant_isolation,
}


# --- the invariants: what "fixed" means, with the same evidence ----------------------

@dataclass(frozen=True)
class Invariant:
    """One thing the assistant must keep, read off a fault's evidence."""

    name: str
    metric: str | tuple[str, ...]  # the evidence it reads (shown as "found")
    holds: Callable[[Evidence], bool]
    expected: str


INVARIANTS: dict[str, tuple[Invariant, ...]] = {
    "lost response": (
        Invariant("no double charge", "questions billed twice",
                  lambda e: e["questions billed twice"] == 0, "0 questions billed twice"),
        Invariant("every question answered", "questions unanswered",
                  lambda e: e["questions unanswered"] == 0, "0 unanswered")),
    "slow replica": (
        Invariant("p99 within budget", "p99 latency (s)",
                  lambda e: e["p99 latency (s)"] <= P99_BUDGET_S, f"p99 ≤ {P99_BUDGET_S:g} s"),
        Invariant("no answer dropped", "dropped", lambda e: e["dropped"] == 0, "0 dropped")),
    "upload burst": (
        Invariant("no lost job", "jobs lost", lambda e: e["jobs lost"] == 0, "0 jobs lost"),
        Invariant("no document processed twice", "processed twice",
                  lambda e: e["processed twice"] == 0, "0 processed twice"),
        Invariant("only poison documents dead-lettered", "dead-lettered",
                  lambda e: e["dead-lettered"] <= e.get("poison documents", 0),
                  "dead-lettered ≤ the poison documents")),
    "everything to the large model": (
        Invariant("cost within 15% of the routing oracle", "cost per day (USD)",
                  lambda e: e["cost per day (USD)"] <= COST_VS_ORACLE * e["oracle cost per day (USD)"],
                  f"≤ {COST_VS_ORACLE:g} × the oracle's cost per day"),
        Invariant("quality kept", "quality", lambda e: e["quality"] >= MIN_QUALITY,
                  f"quality ≥ {MIN_QUALITY:g}")),
    "chunks cut mid-sentence": (
        Invariant("recall on the gold questions", "recall on gold questions",
                  lambda e: e["recall on gold questions"] >= RECALL_TARGET,
                  f"recall ≥ {RECALL_TARGET:g}"),
        Invariant("IoU on the gold questions (not just more text)", "IoU on gold questions",
                  lambda e: e["IoU on gold questions"] >= MIN_IOU, f"IoU ≥ {MIN_IOU:g}")),
    "queueing for batch slots": (
        Invariant("utilisation with headroom", "utilisation",
                  lambda e: e["utilisation"] <= MAX_UTILISATION,
                  f"utilisation ≤ {MAX_UTILISATION:.0%}"),
        Invariant("TTFT p99 within budget", ("TTFT p99 (s)", "peak queue depth (per replica)"),
                  lambda e: e["TTFT p99 (s)"] <= TTFT_P99_BUDGET_S,
                  f"TTFT p99 ≤ {TTFT_P99_BUDGET_S:g} s"),
        Invariant("tokens stream fast enough", "TPOT p50 (s)",
                  lambda e: e["TPOT p50 (s)"] <= TPOT_P50_BUDGET_S,
                  f"TPOT p50 ≤ {TPOT_P50_BUDGET_S:g} s")),
    "tenant filter missing": (
        Invariant("no cross-tenant document",
                  ("cross-tenant results (ask)", "cross-tenant results (related)"),
                  lambda e: e["cross-tenant results (ask)"] + e["cross-tenant results (related)"] == 0,
                  "0 results from the other client, on both paths"),
        Invariant("every query gets top_k results", "queries with fewer than top_k results",
                  lambda e: e["queries with fewer than top_k results"] == 0,
                  "0 short result lists")),
}
