"""Answer key of notebook 08_capstone_ai_assistant: each incident's fault and fix, the hardened
settings of the final check, and the quiz."""

from __future__ import annotations

from typing import Any

from labsupport.checks.capstone import INCIDENT_ORDER

# Each fault's fix, as a change of the settings running during its incident.
FIXES: dict[str, dict[str, Any]] = {
    # 01: claim the key before billing; the retry gets the stored reply.
    "lost response": {"idempotency_keys": True},
    # 02: send the slow replica less, and eject it while it is slow (one host of three).
    "slow replica": {"balancer": "least-connections", "outlier_ejection": True},
    # 03: accept into a queue; 20 consumers (the processor's capacity), a visibility timeout
    # above the 0.25 s of work with room to spare, three receives before the dead-letter queue.
    "upload burst": {"ingest": "queue", "ingest_workers": 20, "visibility_timeout_s": 0.625,
                     "max_receive_count": 3},
    # 04: rules send about a third to the large model, within 15% of the oracle's cost.
    "everything to the large model": {"router": "rules"},
    # 05: heading sections packed with whole sentences up to 80 word pieces.
    "chunks cut mid-sentence": {"chunker": "sections", "chunk_size": 80},
    # 06: 19.5 requests/s over replicas serving 5/s each: 5 replicas keep utilisation ~80%.
    # More batch slots per replica slow every token (TPOT) and barely add throughput.
    "queueing for batch slots": {"replicas": 5},
    # 07: both read paths through the tenant-bound store.
    "tenant filter missing": {"tenant_scoped_paths": ("ask", "related")},
}


def incident_answer(n: int) -> dict[str, Any]:
    """The answer to the game day's incident ``n`` (1 to 7)."""
    fault = INCIDENT_ORDER[n - 1]
    return {"fault": fault, "fix": dict(FIXES[fault])}


def hardened_settings() -> dict[str, Any]:
    """Every fix at once: the settings the assistant should run with after the game day."""
    merged: dict[str, Any] = {}
    for fix in FIXES.values():
        merged.update(fix)
    return merged


QUIZ_ANSWERS = {"retry-key": 2, "slow-replica": 2, "drain-time": 6.25, "replicas": 5,
                "tenant-path": 1}
