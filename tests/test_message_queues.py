"""Tests for labsupport.message_queues and its layers (notebook 03).

The queue is checked against the SQS rules it claims (visibility timeout, receipt
handles, redrive after maxReceiveCount, retention from the original send), under
threads and processes, with workers killed by SIGKILL and the queue process killed
mid-send. The simulator is checked against the schedule's arithmetic, and a real run
against Little's law.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from labsupport import message_queues as mq
from labsupport.bench import message_queues as bench
from labsupport.checks import message_queues as checks
from labsupport.explore import message_queues as explore
from labsupport.services import message_queues as services

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """Simulated seconds: tests move time instead of sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "queue.db")


def python_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --- visibility timeout ---------------------------------------------------------------


def test_visibility_timeout_hides_then_redelivers(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, "jobs", visibility_timeout=30, clock=clock)
    sent = q.send({"n": 1})
    [first] = q.receive()
    assert first.id == sent and first.receive_count == 1 and first.json() == {"n": 1}
    assert q.depth() == {"visible": 0, "in_flight": 1, "delayed": 0}
    clock.advance(29.9)
    assert q.receive() == []  # still inside its visibility window
    clock.advance(0.2)
    [second] = q.receive()  # 30 s passed without a delete: delivered again
    assert second.id == sent and second.receive_count == 2
    assert second.receipt_handle != first.receipt_handle
    assert q.delete(first.receipt_handle) is False  # a stale handle does not delete
    assert q.delete(second.receipt_handle) is True
    assert len(q) == 0 and q.receive() == []


def test_delete_within_window_is_final(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, visibility_timeout=10, clock=clock)
    q.send("x")
    [m] = q.receive()
    assert q.delete(m.receipt_handle)
    clock.advance(3600)
    assert q.receive() == []


def test_late_delete_succeeds_if_nobody_received_it_since(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, visibility_timeout=1, clock=clock)
    q.send("x")
    [m] = q.receive()
    clock.advance(5)  # expired, but no other receive happened: the handle is the latest
    assert q.delete(m.receipt_handle) is True
    assert len(q) == 0


def test_change_visibility_extends_and_releases(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, visibility_timeout=10, clock=clock)
    q.send("x")
    [m] = q.receive()
    clock.advance(8)
    assert q.change_visibility(m.receipt_handle, 60)  # a long job asks for more time
    clock.advance(30)
    assert q.receive() == []
    assert q.change_visibility(m.receipt_handle, 0)  # give it back at once
    [again] = q.receive()
    assert again.receive_count == 2
    assert q.change_visibility(m.receipt_handle, 5) is False  # stale handle


def test_per_receive_visibility_timeout_and_batch(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, visibility_timeout=30, clock=clock)
    ids = q.send_batch([{"i": i} for i in range(5)])
    got = q.receive(max_messages=10, visibility_timeout=2)
    assert [m.id for m in got] == ids  # oldest first
    clock.advance(2.5)
    assert len(q.receive(max_messages=3)) == 3


def test_long_poll_waits_for_a_message(db: str) -> None:
    q = mq.Queue(db)
    threading.Timer(0.15, q.send, args=("late",)).start()
    start = time.monotonic()
    got = q.receive(wait_time_seconds=2)
    assert [m.body for m in got] == ["late"]
    assert 0.1 < time.monotonic() - start < 1.5
    start = time.monotonic()
    assert q.receive(wait_time_seconds=0.1) == []
    assert time.monotonic() - start >= 0.1


# --- dead-letter queue and retention --------------------------------------------------


@pytest.mark.parametrize("max_receive_count", [1, 3, 5])
def test_dead_letter_after_max_receive_count(db: str, max_receive_count: int) -> None:
    clock = FakeClock()
    dlq = mq.Queue(db, "jobs-dlq", clock=clock)
    q = mq.Queue(db, "jobs", visibility_timeout=5, dead_letter_queue=dlq,
                 max_receive_count=max_receive_count, clock=clock)
    mid = q.send("poison")
    for n in range(1, max_receive_count + 1):
        [m] = q.receive()
        assert m.receive_count == n  # delivered exactly max_receive_count times
        clock.advance(6)  # the worker failed: no delete
    assert q.receive() == []  # the next receive moves it instead of delivering it
    assert len(q) == 0
    [dead] = dlq.receive()
    assert dead.id == mid and dead.body == "poison"
    assert dead.sent_at == pytest.approx(1000.0)  # the original enqueue time is kept


def test_dlq_retention_counts_from_original_send(db: str) -> None:
    clock = FakeClock()
    dlq = mq.Queue(db, "dlq", retention_period=100, clock=clock, check_limits=False)
    q = mq.Queue(db, "jobs", visibility_timeout=40, retention_period=1000,
                 dead_letter_queue=dlq, max_receive_count=2, clock=clock, check_limits=False)
    q.send("doc")
    q.receive()
    clock.advance(45)
    q.receive()
    clock.advance(45)
    assert q.receive() == []  # moved to the DLQ at t = 90 s
    assert dlq.depth()["visible"] == 1
    clock.advance(15)  # t = 105 s: 15 s in the DLQ, but 105 s since the first send
    assert dlq.receive() == [] and len(dlq) == 0


def test_retention_drops_old_messages(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, retention_period=60, clock=clock)
    q.send("old")
    clock.advance(30)
    q.send("young")
    clock.advance(31)
    assert [m.body for m in q.receive(max_messages=10)] == ["young"]


@pytest.mark.parametrize("kwargs", [
    {"visibility_timeout": -1}, {"visibility_timeout": 12 * 3600 + 1},
    {"retention_period": 59}, {"retention_period": 14 * 24 * 3600 + 1},
    {"max_receive_count": 0, "dead_letter_queue": "dlq"},
    {"max_receive_count": 1001, "dead_letter_queue": "dlq"},
    {"max_receive_count": 3},  # a redrive policy needs a target queue
])
def test_sqs_limits_are_enforced(db: str, kwargs: dict) -> None:
    if kwargs.get("dead_letter_queue") == "dlq":
        kwargs = dict(kwargs, dead_letter_queue=mq.Queue(db, "dlq"))
    with pytest.raises(ValueError):
        mq.Queue(db, "jobs", **kwargs)


def test_sqs_defaults() -> None:
    assert mq.SQS_VISIBILITY_TIMEOUT_DEFAULT == 30
    assert mq.SQS_VISIBILITY_TIMEOUT_MAX == 43_200
    assert mq.SQS_RETENTION_DEFAULT == 345_600
    assert (mq.SQS_RETENTION_MIN, mq.SQS_RETENTION_MAX) == (60, 1_209_600)
    assert mq.SQS_MAX_RECEIVE_COUNT_RANGE == (1, 1000)


# --- concurrency ----------------------------------------------------------------------


def test_concurrent_threads_never_share_a_message(db: str) -> None:
    q = mq.Queue(db, visibility_timeout=60)  # longer than the test: no redelivery allowed
    q.send_batch([{"i": i} for i in range(400)])
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while True:
            got = q.receive(max_messages=random.choice([1, 3]))
            if not got:
                break
            with lock:
                seen.extend(m.id for m in got)
        q.close()

    threads = [threading.Thread(target=consume) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 400 and len(set(seen)) == 400


_RECEIVER = """
import sys
from labsupport import message_queues as mq
q = mq.Queue(sys.argv[1], "jobs", visibility_timeout=60)
while True:
    got = q.receive(max_messages=2)
    if not got:
        break
    for m in got:
        print(m.id, flush=True)
"""


def test_concurrent_processes_never_share_a_message(db: str) -> None:
    q = mq.Queue(db, visibility_timeout=60)
    sent = set(q.send_batch([{"i": i} for i in range(600)]))
    procs = [subprocess.Popen([sys.executable, "-c", _RECEIVER, db], stdout=subprocess.PIPE,
                              text=True, env=python_env()) for _ in range(3)]
    outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    received = [i for out in outputs for i in out]
    assert len(received) == len(set(received)) == 600  # each message to exactly one
    assert set(received) == sent


# --- crashes: workers killed with SIGKILL, the queue process killed mid-send ---------


def test_2000_jobs_workers_killed_at_random_none_lost(db: str) -> None:
    q = mq.Queue(db, "jobs", visibility_timeout=0.5)
    docs = services.make_documents(2000)
    for start in range(0, 2000, 100):
        q.send_batch([d.to_json() for d in docs[start:start + 100]])
    rng = random.Random(7)
    spawn = lambda: services.spawn_worker_process(db, visibility_timeout=0.5,  # noqa: E731
                                            processing_time=0.001)
    workers = [spawn() for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + 90
    try:
        while len(q) and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.4))
            victim = rng.randrange(len(workers))
            services.kill_hard(workers[victim])  # SIGKILL: mid-job, nothing cleaned up
            kills += 1
            workers[victim] = spawn()
    finally:
        for w in workers:
            services.kill_hard(w)
    store = mq.ResultStore(db)
    effects = store.effects_per_doc()
    assert kills >= 3
    assert len(q) == 0, f"{len(q)} messages left after {kills} kills"
    assert set(effects) == {d.doc_id for d in docs}  # zero lost
    assert max(effects.values()) == 1  # idempotent processing: exactly one effect each


_SENDER = """
import sys, time
from labsupport import message_queues as mq
q = mq.Queue(sys.argv[1], "jobs")
for i in range(100000):
    mid = q.send({"i": i})
    print(mid, flush=True)  # printed only after the send committed
"""


def test_queue_survives_sigkill_of_its_process(db: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SENDER, db], stdout=subprocess.PIPE,
                            text=True, env=python_env())
    acknowledged = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 300:
            break
    services.kill_hard(proc)  # mid-send: no close, no checkpoint
    acknowledged += proc.stdout.read().split()
    reopened = mq.Queue(db, "jobs", visibility_timeout=60)
    stored = {m["id"] for m in reopened.peek()}
    assert set(acknowledged) <= stored  # every send that returned is still there
    assert len(stored) - len(acknowledged) <= 1  # at most the one in progress


def test_reopen_keeps_in_flight_messages(db: str) -> None:
    clock = FakeClock()
    q = mq.Queue(db, visibility_timeout=30, clock=clock)
    ids = q.send_batch(["a", "b", "c"])
    [m] = q.receive()
    q.close()
    del q
    q2 = mq.Queue(db, visibility_timeout=30, clock=clock)  # "the process restarted"
    assert q2.depth() == {"visible": 2, "in_flight": 1, "delayed": 0}
    clock.advance(31)
    got = q2.receive(max_messages=10)
    assert [g.id for g in got] == ids and got[0].receive_count == 2


# --- workers, idempotency -------------------------------------------------------------


def _config(vt: float, handler: mq.Handler, workers: int = 5,
            mrc: int | None = 3) -> services.PipelineConfig:
    return services.PipelineConfig(workers=workers, visibility_timeout=vt, max_receive_count=mrc,
                             handler=handler)


def test_short_visibility_timeout_duplicates_and_idempotency_fixes_it() -> None:
    docs = services.make_documents(30)
    # visibility timeout (0.02 s) shorter than the processing time (0.05 s)
    naive = services.run_pipeline(_config(0.02, mq.process_naive, mrc=None), docs,
                            processing_time=0.05, deadline=1.5)
    assert sum(c > 1 for c in naive.effects.values()) > 0
    safe = services.run_pipeline(_config(0.02, mq.process_idempotent, mrc=None), docs,
                           processing_time=0.05, deadline=3)
    assert set(safe.effects) == {d.doc_id for d in docs}
    assert max(safe.effects.values()) == 1


def test_crash_and_poison_in_a_real_pool() -> None:
    docs = services.make_documents(40, poison={3, 17})
    faults = services.FaultPlan(crash_on={docs[5].name, docs[20].name})
    run = services.run_pipeline(_config(0.1, mq.process_idempotent), docs, processing_time=0.02,
                          faults=faults, deadline=10)
    assert run.drained_at is not None
    assert len(run.stats.crashes) == 2
    assert sorted(run.dead_lettered) == [docs[3].doc_id, docs[17].doc_id]
    good = {d.doc_id for i, d in enumerate(docs) if i not in (3, 17)}
    assert set(run.completed_at) == good and set(run.effects) == good
    assert run.stats.failures["CorruptDocument"] == 2 * 3  # each poison tried 3 times


def test_processing_service_enforces_capacity() -> None:
    service = services.ProcessingService(processing_time=0.2, capacity=2)
    doc = mq.Document("d", "d.pdf", "text")
    errors: list[str] = []

    def call() -> None:
        try:
            service.extract_text(doc)
        except services.ServiceOverloaded:
            errors.append("overloaded")

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and service.peak_concurrency == 2
    with pytest.raises(services.CorruptDocument):
        service.extract_text(mq.Document("p", "p.pdf", mq.CORRUPT_MARKER + "x"))


def test_littles_law_holds_on_a_real_run() -> None:
    docs = services.make_documents(120)
    run = services.run_pipeline(_config(1.0, mq.process_idempotent, workers=4), docs,
                          processing_time=0.02, arrival_rate=150, sample_interval=0.005)
    law = explore.littles_law(run)
    assert law["relative_error"] < 0.1, law


# --- the simulator against arithmetic --------------------------------------------------


@pytest.mark.parametrize("n,workers", [(500, 20), (101, 10), (7, 3), (1, 1)])
def test_simulation_without_faults_is_ideal(n: int, workers: int) -> None:
    sim = explore.simulate(n, workers, processing_time=2.0, visibility_timeout=5.0, poison=0)
    assert sim.drained_at == pytest.approx(math.ceil(n / workers) * 2.0)
    assert sim.duplicates == 0 and sim.dead_lettered == 0
    assert sim.done[-1] == n


def test_simulation_poison_goes_to_dlq_and_short_timeout_duplicates() -> None:
    sim = explore.simulate(100, 10, processing_time=1.0, visibility_timeout=3.0, poison=2,
                      max_receive_count=4)
    assert sim.dead_lettered == 2 and sim.drained_at is not None
    loop = explore.simulate(100, 10, processing_time=1.0, visibility_timeout=3.0, poison=2,
                       max_receive_count=None)
    assert loop.drained_at is None  # poison loops for ever without a DLQ
    dup = explore.simulate(100, 10, processing_time=1.0, visibility_timeout=0.5, poison=0)
    assert dup.duplicates > 0


def test_simulation_crashes_cost_a_visibility_timeout() -> None:
    base = explore.simulate(200, 10, processing_time=1.0, visibility_timeout=2.0, poison=0)
    crashy = explore.simulate(200, 10, processing_time=1.0, visibility_timeout=2.0, poison=0,
                         crash_rate=0.1, seed=1)
    assert crashy.crashes > 5 and crashy.duplicates == 0
    assert crashy.drained_at > base.drained_at


def test_widget_callback_is_fast() -> None:
    fig = explore.depth_figure()
    explore.update_depth_figure(fig, workers=20, crash_rate=0.05, visibility_timeout=3.0)
    times = []
    for vt in (0.5, 2.0, 6.0):
        start = time.perf_counter()
        text = explore.update_depth_figure(fig, workers=10, crash_rate=0.1, visibility_timeout=vt)
        times.append(time.perf_counter() - start)
    assert "crashes" in text and len(fig.data[0].x) > 10
    assert sorted(times)[1] < 0.15


# --- the front door over HTTP ---------------------------------------------------------


def test_front_door_accepts_reports_status_and_rejects_bad_requests(db: str) -> None:
    from fastapi.testclient import TestClient

    dlq = mq.Queue(db, "jobs-dlq")
    q = mq.Queue(db, "jobs", dead_letter_queue=dlq, max_receive_count=1)
    store = mq.ResultStore(db)
    client = TestClient(services.create_app(q, store))
    r = client.post("/uploads", json={"name": "a.pdf", "content": "hello"})
    assert r.status_code == 202
    job = r.json()["job_id"]
    assert client.get(f"/jobs/{job}").json()["status"] == "queued"
    [m] = q.receive()
    assert client.get(f"/jobs/{job}").json()["status"] == "processing"
    mq.process_idempotent(mq.Document.from_json(m.body), services.ProcessingService(0.0), store)
    q.delete(m.receipt_handle)
    assert client.get(f"/jobs/{job}").json()["status"] == "done"
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/uploads", json={"content": "no name"}).status_code == 422
    assert client.post("/uploads", content=b"not json").status_code == 422


def test_sync_endpoint_limits_and_async_accepts_everything(db: str) -> None:
    server = services.serve(db, processing_time=0.3, sync_limit=2, sync_timeout=0.2,
                      sync_max_waiting=3, name="test-front-door")
    try:
        docs = services.make_documents(12)
        sync = services.fire_requests(server.url + "/process-sync", docs)
        # 2 slots, each busy 0.3 s > the 0.2 s wait; a waiting room of 3; the rest turned
        # away. Exact counts hold on a quiet machine (2 / 3 / 7); under CPU contention the
        # 12 requests arrive spread out, so a slot or a waiting place can free up between.
        counts = {s: sync.count(s) for s in ("accepted", "timed_out", "rejected")}
        assert sum(counts.values()) == 12, counts
        assert 2 <= counts["accepted"] <= 4, counts
        assert counts["timed_out"] >= 1, counts  # the waiting room held some, in vain
        uploads = services.fire_requests(server.url + "/uploads", docs)
        assert uploads.count("accepted") == 12 and len(uploads.job_of) == 12
        assert len(mq.Queue(db, "jobs")) == 12
        again = services.serve(db, name="test-front-door")  # a re-run replaces the old server
        assert services._SERVERS["test-front-door"] is again
        old = services.fire_requests(server.url + "/uploads", docs[:1], timeout=2)
        assert old.count("rejected") == 1  # the old one no longer listens
    finally:
        services.stop_all_servers()
    assert not any(name == "test-front-door" for name in services._SERVERS)


# --- the exercise checker -------------------------------------------------------------


@pytest.mark.parametrize("answer", [None, 42, lambda: "config"])
def test_checker_turns_wrong_answers_into_feedback(answer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    result = checks.check_exercise(answer)
    assert not result.passed
    assert json.loads((tmp_path / "p.json").read_text())["03_message_queues"]["attempts"] == 1


def test_checker_rejects_too_many_workers_without_running(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    result = checks.check_exercise(lambda: _config(0.5, mq.process_idempotent, workers=50))
    assert not result.passed
    names = {c.name: c for c in result.checks}
    assert not names["workers within capacity"].passed
    assert "50" in names["workers within capacity"].found


def test_scenario_faults_are_fixed_and_distinct() -> None:
    docs, poison, crashes = checks._scenario_docs(checks.SCENARIO)
    assert len(docs) == 500 and len(poison) == 2 and len(crashes) == 3
    assert not poison & crashes
    assert sum(d.corrupt for d in docs) == 2
    assert Counter(d.name in poison for d in docs if d.corrupt) == Counter({True: 2})


def test_crash_after_effect_duplicates_a_naive_handler_only() -> None:
    docs = services.make_documents(30)
    victims = {docs[4].name, docs[11].name, docs[25].name}
    runs = {}
    for handler in (mq.process_naive, mq.process_idempotent):
        faults = services.FaultPlan(crash_after_effect_on=victims)
        runs[handler] = services.run_pipeline(_config(0.1, handler), docs, processing_time=0.02,
                                        faults=faults, deadline=10)
    naive, safe = runs[mq.process_naive], runs[mq.process_idempotent]
    for run in (naive, safe):
        assert run.drained_at is not None and len(run.stats.crashes) == 3
        assert set(run.completed_at) == {d.doc_id for d in docs}
    # the effect was committed before each crash: the redelivery applies it again
    assert {d for d, c in naive.effects.items() if c > 1} == {docs[i].doc_id for i in (4, 11, 25)}
    assert set(safe.effects.values()) == {1} and len(safe.effects) == 30


def test_scenario_crashes_after_effect_are_fixed_and_distinct() -> None:
    sc = checks.SCENARIO
    docs, poison, crashes = checks._scenario_docs(sc)
    faults = checks._scenario_faults(sc, docs, poison, crashes)
    assert faults == checks._scenario_faults(sc, docs, poison, crashes)  # fixed by the seed
    assert len(faults.crash_after_effect_on) == sc.crashes_after_effect == 12
    assert not faults.crash_after_effect_on & (poison | crashes)
    assert faults.crash_on == crashes
    assert sc.processing_time == checks.EXERCISE_PROCESSING_TIME == 0.25


def test_checker_fails_a_non_idempotent_handler_with_good_settings(tmp_path, monkeypatch) -> None:
    """A right visibility timeout used to hide a non-idempotent handler: every injected
    crash came before the effect. The crashes after the effect must catch it."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    vt = 2.5 * checks.SCENARIO.processing_time  # the reference solution's timeout
    result = checks.check_exercise(lambda: _config(vt, mq.process_naive, workers=20))
    assert not result.passed
    row = {c.name: c for c in result.checks}["every good document processed exactly once (in effect)"]
    assert not row.passed
    # the 12 crashes after the effect duplicate for sure (a busy machine may add a late one)
    duplicated = int(re.search(r"; (\d+) processed more than once", row.found).group(1))
    assert duplicated >= 12, row.found
    assert row.hint.startswith(f"12 of the {duplicated} ")
    assert "crashed after the effect was committed" in row.hint


def test_checker_hints_match_a_long_visibility_timeout(tmp_path, monkeypatch) -> None:
    """30 s (the SQS default) with a DLQ and an idempotent handler: nothing is duplicated
    and max_receive_count is set, so the hints must say what happened instead."""
    monkeypatch.setenv("LABSUPPORT_PROGRESS", str(tmp_path / "p.json"))
    small = checks.Scenario(uploads=100, processing_time=0.1)  # a 0.5 s ideal drain: a quick check
    found = checks._checks(lambda: _config(30.0, mq.process_idempotent, workers=20), small)
    rows = {c.name: c for c in found}
    once = rows["every good document processed exactly once (in effect)"]
    dlq = rows["both poison documents in the DLQ"]
    assert not once.passed and not dlq.passed
    assert "uplicate" not in once.hint and "Without max_receive_count" not in dlq.hint
    assert "never processed" in once.hint and "visibility timeout (30 s)" in once.hint
    assert "0 processed more than once" in once.found
    assert "max_receive_count = 3 is set" in dlq.hint and "3 × 30 s = 90 s" in dlq.hint
    assert "still in the main queue after 1 and 1 receives" in dlq.found
    assert not rows["drain time near the ideal"].passed


# --- the layers: command lines and the benchmark --------------------------------------


@pytest.mark.parametrize("module", ["labsupport.services.message_queues",
                                    "labsupport.services.message_queues_workers",
                                    "labsupport.bench.message_queues"])
def test_command_lines_answer_help(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, env=python_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"python -m {module}" in proc.stdout


def test_benchmark_rows_are_rates() -> None:
    rows = bench.bench(n_messages=40)
    assert [r["threads"] for r in rows] == [1, 4]
    assert all(r[k] > 0 for r in rows for k in ("send_per_s", "receive_per_s", "delete_per_s"))
