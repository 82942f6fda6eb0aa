"""The simulated LLM server of notebook 06 over real HTTP, its load generator and scraper.

Backs ``notebooks/06_ai_observability.ipynb`` (the mechanism is
``labsupport/ai_observability.py``):

* the engine served for real over HTTP (FastAPI streaming, server-sent events) on
  127.0.0.1, instrumented with ``prometheus_client`` under the OpenTelemetry GenAI metric
  names and bucket boundaries, with a ``/metrics`` endpoint;
* a load generator (httpx streaming) that measures each request's token times and a
  scraper that reads ``/metrics``; :func:`scrapes_from_simulation` gives the same scrapes
  for an offline run;
* the scenario's incident, replayed over HTTP (:func:`replay_incident`).

The engine keeps a virtual clock in simulated seconds and paces itself against the wall
clock at ``speed`` simulated seconds per wall second, so a minute of traffic streams over
real HTTP in a few seconds. Every token carries its simulated timestamp, and the load
generator declares each request's scheduled arrival time; the server admits it at that
simulated time. HTTP jitter therefore never changes the results: an HTTP run equals
:func:`labsupport.ai_observability.simulate` on the same workload.

From a shell: ``python -m labsupport.services.ai_observability --port 8000`` serves the
engine in real time (speed 1); try ``curl -N -X POST localhost:8000/v1/completions
-H 'content-type: application/json' -d '{"prompt": "hello there", "max_tokens": 5}'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from labsupport import servers
from labsupport.ai_observability import (
    DURATION_METRIC,
    HISTOGRAMS,
    PROMPT_METRIC,
    RUNNING_METRIC,
    TOKENS_METRIC,
    TPOT_METRIC,
    TTFT_METRIC,
    WAITING_METRIC,
    BatchEngine,
    EngineConfig,
    Request,
    RequestRecord,
    SimResult,
    TokenEvent,
    bucketize,
    make_workload,
)

CLOCK_METRIC = "llm_engine_time_seconds"  # the engine's simulated clock
OTEL_LABELS = {"gen_ai_operation_name": "text_completion", "gen_ai_provider_name": "labsupport",
               "gen_ai_request_model": "labsupport-sim"}  # the last: conditionally required

VOCAB = ("the", "policy", "covers", "leave", "for", "all", "staff", "and", "requires",
         "notice", "of", "two", "weeks", "in", "writing", "before", "it", "starts", ".")


# --- instrumentation ------------------------------------------------------------------


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (re-run safe)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        names = list(OTEL_LABELS)
        docs = {TTFT_METRIC: "Time to generate first token (OTel gen_ai.server.time_to_first_token).",
                TPOT_METRIC: "Time per output token after the first (OTel gen_ai.server.time_per_output_token).",
                DURATION_METRIC: "Request duration to the last token (OTel gen_ai.server.request.duration).",
                PROMPT_METRIC: "Prompt tokens per request (vLLM request_prompt_tokens)."}
        self.hist = {name: Histogram(name, docs[name], names, buckets=buckets,
                                     registry=self.registry).labels(**OTEL_LABELS)
                     for name, buckets in HISTOGRAMS.items()}
        self.waiting = Gauge(WAITING_METRIC, "Requests waiting for a batch slot.",
                             registry=self.registry)
        self.running = Gauge(RUNNING_METRIC, "Requests in the running batch.",
                             registry=self.registry)
        self.tokens = Counter(TOKENS_METRIC.removesuffix("_total"), "Generated tokens.",
                              registry=self.registry)
        self.clock = Gauge(CLOCK_METRIC, "The engine's simulated clock.", registry=self.registry)

    def observe(self, ev: TokenEvent) -> None:
        """Account one token event (server-side times, from arrival at the server)."""
        self.tokens.inc()
        seq = ev.seq
        if ev.index == 0:
            self.hist[TTFT_METRIC].observe(ev.t_s - seq.arrival_s)
            self.hist[PROMPT_METRIC].observe(seq.prompt_tokens)
        if ev.done:
            self.hist[DURATION_METRIC].observe(ev.t_s - seq.arrival_s)
            if seq.emitted > 1:
                self.hist[TPOT_METRIC].observe((ev.t_s - seq.first_token_s) / (seq.emitted - 1))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


# --- the server -----------------------------------------------------------------------


class ServedEngine:
    """The engine on a paced virtual clock inside the server's event loop.

    ``clock()`` is wall time times ``speed``. The engine runs ``lag_s`` (wall seconds)
    behind it, so a request posted on time is always known before the engine reaches its
    arrival time: that is what makes an HTTP run deterministic.
    """

    def __init__(self, config: EngineConfig, speed: float, lag_s: float = 0.4):
        self.engine = BatchEngine(config)
        self.metrics = ServerMetrics()
        self.speed, self.lag_sim = float(speed), float(lag_s) * float(speed)
        self.t0 = time.perf_counter()
        self.now_s = 0.0  # the engine's virtual time
        self.late = 0     # requests that arrived after their declared time had passed
        self._queues: dict[int, asyncio.Queue] = {}
        self._next_id = 0
        self._wake: asyncio.Event | None = None

    def clock(self) -> float:
        return (time.perf_counter() - self.t0) * self.speed

    def submit(self, prompt_tokens: int, max_tokens: int,
               arrival_s: float | None) -> asyncio.Queue:
        arrival = self.clock() if arrival_s is None else float(arrival_s)
        if arrival < self.now_s:
            self.late += 1
            arrival = self.now_s
        rid, self._next_id = self._next_id, self._next_id + 1
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        self.engine.add(rid, arrival, prompt_tokens, max_tokens)
        if self._wake is not None:
            self._wake.set()
        return queue

    async def _until(self, t_sim: float) -> None:
        delay = (t_sim + self.lag_sim) / self.speed - (time.perf_counter() - self.t0)
        # Always yield, even when behind schedule: requests being received must get the
        # event loop before the engine moves past their arrival time.
        await asyncio.sleep(max(delay, 0.0))

    def _set_gauges(self) -> None:
        self.metrics.waiting.set(len(self.engine.waiting))
        self.metrics.running.set(len(self.engine.running))
        self.metrics.clock.set(self.now_s)

    async def run(self) -> None:
        self._wake = asyncio.Event()
        eng = self.engine
        while True:
            await self._until(self.now_s)
            eng.admit_arrivals(self.now_s)
            duration = eng.begin_step(self.now_s)
            self._set_gauges()
            if duration is None:
                nxt = eng.next_arrival()
                if nxt is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._until(nxt)
                earliest = eng.next_arrival()  # a request posted meanwhile may come first
                self.now_s = max(self.now_s, nxt if earliest is None else min(earliest, nxt))
                continue
            t_end = self.now_s + duration
            await self._until(t_end)
            self.now_s = t_end
            for ev in eng.end_step(t_end):
                self.metrics.observe(ev)
                queue = self._queues.get(ev.req_id)
                if queue is not None:
                    queue.put_nowait(ev)
                    if ev.done:
                        queue.put_nowait(None)
                        del self._queues[ev.req_id]
            self._set_gauges()


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (a small subset of OpenAI's completions API)."""

    prompt: str = ""
    prompt_tokens: int | None = Field(None, ge=1, le=32768)  # overrides len(prompt.split())
    max_tokens: int = Field(16, ge=1, le=4096)
    arrival_s: float | None = Field(None, ge=0)  # scheduled arrival on the server clock


def create_app(config: EngineConfig | None = None, *, speed: float = 1.0, lag_s: float = 0.4):
    """The FastAPI app: POST /v1/completions (streams tokens as server-sent events),
    GET /metrics (Prometheus text format), GET /clock, GET /health."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import Response, StreamingResponse

    served = ServedEngine(config or EngineConfig(), speed, lag_s)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(served.run())
        yield
        task.cancel()

    app = FastAPI(title="labsupport simulated LLM server", lifespan=lifespan)
    app.state.served = served

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        n_prompt = body.prompt_tokens or len(body.prompt.split())
        if n_prompt < 1:
            raise HTTPException(422, "give a non-empty prompt or prompt_tokens >= 1")
        queue = served.submit(n_prompt, body.max_tokens, body.arrival_s)

        async def stream():
            while (ev := await queue.get()) is not None:
                word = VOCAB[(ev.req_id * 7 + ev.index) % len(VOCAB)]
                yield f"data: {json.dumps({'index': ev.index, 't_s': ev.t_s, 'text': word})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/metrics")
    async def metrics():
        # The engine's state is final up to max(its step start, the paced clock - lag).
        served.metrics.clock.set(max(served.now_s, served.clock() - served.lag_sim))
        return Response(served.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/clock")
    async def clock():
        return {"now_s": served.clock(), "engine_s": served.now_s, "speed": served.speed,
                "lag_s": served.lag_sim / served.speed, "late_requests": served.late}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


SERVER_NAME = "llm-server"  # one simulated LLM server per kernel: re-running replaces it


def start_server(config: EngineConfig | None = None, *, speed: float = 10.0,
                 port: int = 0) -> servers.ServerHandle:
    """Serve the engine on 127.0.0.1 in a background thread (stops any previous one).

    Runs through labsupport/servers.py, shared with notebooks 01 and 03; lifespan "on"
    because the app starts its engine loop in its lifespan handler."""
    config = config or EngineConfig()
    handle = servers.serve(create_app(config, speed=speed), SERVER_NAME, port=port,
                           lifespan="on")
    handle.config, handle.speed = config, speed  # what it simulates: to compare with simulate()
    return handle


def stop_server() -> None:
    """Stop the server this process started, if any."""
    servers.stop(SERVER_NAME)


# --- load generator and scraper -----------------------------------------------------


@dataclass
class LoadRun:
    """The result of a load test: client records, scrapes of /metrics, and the cost."""

    records: list[RequestRecord]
    scrapes: list[dict[str, Any]]
    wall_s: float
    late_requests: int


def parse_metrics(text: str) -> dict[str, Any]:
    """One scrape of the Prometheus text format as a plain dict: gauges and counters by
    sample name; each histogram as ``{"le": [...], "cumulative": [...], "sum", "count"}``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            buckets = sorted((float(s.labels["le"]), s.value) for s in family.samples
                             if s.name.endswith("_bucket"))
            hist = {"le": [b for b, _ in buckets], "cumulative": [c for _, c in buckets]}
            for s in family.samples:
                if s.name.endswith("_sum"):
                    hist["sum"] = s.value
                elif s.name.endswith("_count"):
                    hist["count"] = s.value
            out[family.name] = hist
        else:
            for s in family.samples:
                if not s.name.endswith("_created"):
                    out[s.name] = s.value
    return out


def _cpu_seconds() -> float:
    import psutil
    times = psutil.Process().cpu_times()
    return times.user + times.system


def run_load(url: str, workload: Sequence[Request], *, scrape_every_s: float = 0.5) -> LoadRun:
    """Send ``workload`` open-loop (each request at its scheduled time, whatever happened
    to the earlier ones), stream every answer with httpx and timestamp each token;
    scrape /metrics every ``scrape_every_s`` simulated seconds meanwhile. Blocks until
    every answer is complete. Runs its own event loop in a thread, so it works inside
    Jupyter's running loop too."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["run"] = asyncio.run(_drive(url, list(workload), scrape_every_s))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name="load-generator", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["run"]


async def _drive(url: str, workload: list[Request], scrape_every_s: float) -> LoadRun:
    import httpx

    wall0 = time.perf_counter()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        clock = (await client.get("/clock")).json()
        speed = clock["speed"]
        base = clock["now_s"]                    # the run's t = 0 on the server clock
        local0 = time.perf_counter() * speed     # the same instant on our clock

        def sim_now() -> float:
            return time.perf_counter() * speed - local0

        # Post each request a little ahead of its scheduled time: the server holds it until
        # its simulated arrival, so a busy CPU delaying our send cannot change the results.
        lead = clock["lag_s"] / 2  # wall seconds

        async def one(req: Request) -> RequestRecord:
            await asyncio.sleep(max(0.0, (req.arrival_s - sim_now()) / speed - lead))
            body = {"prompt_tokens": req.prompt_tokens, "max_tokens": req.output_tokens,
                    "arrival_s": base + req.arrival_s}
            times = []
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        times.append(json.loads(line[6:])["t_s"] - base)
            return RequestRecord(req.id, req.arrival_s, req.prompt_tokens, tuple(times))

        scrapes: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def scrape_loop() -> None:
            await asyncio.sleep(clock["lag_s"])  # the engine runs this far behind the clock
            last_cpu, last_wall = _cpu_seconds(), time.perf_counter()
            while True:
                finished = done.is_set()
                text = (await client.get("/metrics")).text
                cpu, wall = _cpu_seconds(), time.perf_counter()
                snap = parse_metrics(text)
                snap["t_s"] = snap.pop(CLOCK_METRIC) - base
                snap["cpu_percent"] = 100.0 * (cpu - last_cpu) / max(wall - last_wall, 1e-9)
                last_cpu, last_wall = cpu, wall
                scrapes.append(snap)
                if finished:
                    return
                try:
                    await asyncio.wait_for(done.wait(), scrape_every_s / speed)
                except TimeoutError:
                    pass

        scraper = asyncio.create_task(scrape_loop())
        records = await asyncio.gather(*(one(r) for r in workload))
        done.set()
        await scraper
        late = (await client.get("/clock")).json()["late_requests"]
    return LoadRun(list(records), scrapes, time.perf_counter() - wall0, late)


# --- synthetic scrapes from an offline simulation -----------------------------------


def scrapes_from_simulation(sim: SimResult, every_s: float = 1.0) -> list[dict[str, Any]]:
    """What scraping the server every ``every_s`` would have returned during ``sim``:
    the same dict shape as :func:`parse_metrics`. ``cpu_percent`` here is the engine's
    modelled host CPU (scheduler and detokenizer; the model itself runs on the
    accelerator), not a measurement."""
    firsts = np.array([t[0] for t in sim.server_token_times])
    lasts = np.array([t[-1] for t in sim.server_token_times])
    counts = np.array([len(t) for t in sim.server_token_times])
    all_tokens = np.sort(np.concatenate(sim.server_token_times))
    arr = sim.server_arrival_s
    ttfts = firsts - arr
    durations = lasts - arr
    with np.errstate(invalid="ignore", divide="ignore"):
        tpots = np.where(counts > 1, (lasts - firsts) / np.maximum(counts - 1, 1), np.nan)
    observed = {TTFT_METRIC: (firsts, ttfts), PROMPT_METRIC: (firsts, sim.prompt_tokens),
                DURATION_METRIC: (lasts, durations),
                TPOT_METRIC: (lasts[counts > 1], tpots[counts > 1])}
    cpu_t = np.array([t for t, _ in sim.host_cpu])
    cpu_s = np.array([c for _, c in sim.host_cpu])
    end = float(lasts.max())
    scrapes = []
    previous_cpu = 0.0
    for t in np.arange(0.0, end + every_s, every_s):
        snap: dict[str, Any] = {"t_s": float(t)}
        for name, (when, values) in observed.items():
            seen = np.asarray(values, dtype=float)[when <= t]
            bounds = list(HISTOGRAMS[name]) + [math.inf]
            snap[name] = {"le": bounds, "cumulative": [float(c) for c in bucketize(seen, bounds)],
                          "sum": float(seen.sum()), "count": float(seen.size)}
        snap[WAITING_METRIC] = float(np.sum(arr <= t) - np.sum(sim.admitted_s <= t))
        snap[RUNNING_METRIC] = float(np.sum(sim.admitted_s <= t) - np.sum(lasts <= t))
        snap[TOKENS_METRIC] = float(np.searchsorted(all_tokens, t, side="right"))
        cpu_now = float(np.interp(t, cpu_t, cpu_s))
        snap["cpu_percent"] = 100.0 * (cpu_now - previous_cpu) / every_s if t > 0 else 0.0
        previous_cpu = cpu_now
        scrapes.append(snap)
    return scrapes


# --- the scenario's incident, replayed over HTTP ------------------------------------

INCIDENT_SEED = 2024
INCIDENT_CONFIG = EngineConfig(slots=8)
INCIDENT_LOAD = dict(rate_per_s=6.5, duration_s=40.0)  # ~1.3x what 8 slots sustain
INCIDENT_SPEED = 20.0  # simulated seconds per wall second


@dataclass
class Incident:
    """What you are handed: per-request records and the scrapes of /metrics."""

    records: list[RequestRecord]
    scrapes: list[dict[str, Any]]
    description: str


def incident_workload(seed: int = INCIDENT_SEED) -> list[Request]:
    return make_workload(INCIDENT_LOAD["rate_per_s"], INCIDENT_LOAD["duration_s"], seed)


def replay_incident(seed: int = INCIDENT_SEED, *, speed: float = INCIDENT_SPEED) -> Incident:
    """Replay the incident over real HTTP: start the server, run the overload, scrape."""
    server = start_server(INCIDENT_CONFIG, speed=speed)
    run = run_load(server.url, incident_workload(seed))
    return Incident(run.records, run.scrapes,
                    f"{len(run.records)} requests over {INCIDENT_LOAD['duration_s']:.0f} s, "
                    f"{len(run.scrapes)} scrapes (HTTP, {run.wall_s:.1f} s wall)")


# --- shell entry point ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the simulated LLM engine.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall second (1 = real time)")
    parser.add_argument("--slots", type=int, default=EngineConfig.slots)
    args = parser.parse_args(argv)
    # Real time from a shell: a short lag is enough (no scheduled arrivals to wait for).
    app = create_app(replace(EngineConfig(), slots=args.slots), speed=args.speed, lag_s=0.05)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
