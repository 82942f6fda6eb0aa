"""Wrong answers to notebook 03's scenario exercise ("500 uploads at 2pm").

Each is a ``my_pipeline() -> services.PipelineConfig`` a learner could plausibly write;
the checker must tell every one "not yet", with the named row failing. Every entry but
"more workers than the service takes" runs the whole scenario (about 10 s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from labsupport import message_queues as mq
from labsupport.checks import message_queues as checks
from labsupport.services import message_queues as services
from labsupport.solutions import message_queues as key

from . import Exercise, WrongAnswer

Pipeline = Callable[[], services.PipelineConfig]


def starter() -> Pipeline:
    """The notebook's untouched starter cell."""

    def process_document(doc: mq.Document, service: services.ProcessingService,
                         store: mq.ResultStore) -> None:
        text = service.extract_text(doc)         # the slow call; raises on a corrupt document
        store.record_effect(doc.doc_id, text)    # the side effect: applied on every delivery

    def my_pipeline() -> services.PipelineConfig:
        return services.PipelineConfig(
            workers=20,
            visibility_timeout=0.1,   # seconds; compare with EXERCISE_PROCESSING_TIME
            max_receive_count=None,   # None: no dead-letter queue
            handler=process_document,
        )

    return my_pipeline


def _key_but(**changes) -> Pipeline:
    """The answer key's configuration with some fields changed."""
    return lambda: dataclasses.replace(key.my_pipeline(), **changes)


def _swallow_errors(doc: mq.Document, service: services.ProcessingService,
                    store: mq.ResultStore) -> None:
    """Idempotent, but catches the service's exception: the message is then deleted."""
    try:
        key.process_document(doc, service, store)
    except Exception:  # noqa: BLE001 - the mistake this entry is about
        pass


def _do_nothing(doc: mq.Document, service: services.ProcessingService,
                store: mq.ResultStore) -> None:
    """Returns at once: every message is deleted, no work is ever done."""


EXERCISES = [
    Exercise(
        id=checks.EXERCISE_ID,
        check=lambda a: checks.check_exercise(a),
        answer_key=lambda: key.my_pipeline,
        gallery=[
            WrongAnswer("starter", "a 0.1 s visibility timeout under 0.25 s of work duplicates, "
                        "no DLQ loops the poison for ever, and the handler is not idempotent",
                        starter, "poison"),
            WrongAnswer("good settings, naive handler", "a worker that crashes after the effect "
                        "and before the delete gets its message back: the effect is applied twice",
                        lambda: _key_but(handler=mq.process_naive), "exactly once"),
            WrongAnswer("the SQS default visibility timeout", "30 s: a crashed worker's document "
                        "waits 30 s before a retry, far beyond the drain budget",
                        lambda: _key_but(visibility_timeout=30.0), "drain time"),
            WrongAnswer("no dead-letter queue", "max_receive_count=None: the poison documents "
                        "come back for ever and the queue never empties",
                        lambda: _key_but(max_receive_count=None), "poison"),
            WrongAnswer("handler swallows exceptions", "catching the service's error "
                        "acknowledges the poison message: it is deleted, never dead-lettered",
                        lambda: _key_but(handler=_swallow_errors), "poison"),
            WrongAnswer("handler does nothing", "every message is deleted and no document is "
                        "ever processed", lambda: _key_but(handler=_do_nothing), "exactly once"),
            WrongAnswer("more workers than the service takes", "50 workers against a service "
                        "that handles 20 at a time: 30 only get 'overloaded' errors",
                        lambda: _key_but(workers=50), "workers within capacity"),
        ],
    ),
]
