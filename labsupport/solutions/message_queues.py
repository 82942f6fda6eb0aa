"""Reference solution of the 03_message_queues exercise (the answer key).

500 uploads at 2pm, a processing service that handles 20 at a time: put a queue in
front of it and drain the queue with a pool that never loses a document.
"""

from __future__ import annotations

from labsupport import message_queues as mq
from labsupport.checks import message_queues as checks
from labsupport.services import message_queues as services

PROCESSING_TIME = checks.EXERCISE_PROCESSING_TIME  # 0.25 s per document in the exercise


def process_document(doc: mq.Document, service: services.ProcessingService,
                     store: mq.ResultStore) -> None:
    """Idempotent: the effect is applied at most once per document, however often the
    message is delivered (at-least-once delivery, exactly-once effect), including after
    a worker that crashed between the effect and the delete."""
    if store.is_processed(doc.doc_id):  # a redelivery of finished work: skip the slow call
        return
    text = service.extract_text(doc)
    with store.transaction() as tx:  # the check and the effect commit together
        if tx.mark_processed(doc.doc_id):  # False: another worker finished it first
            tx.record_effect(doc.doc_id, text)


def my_pipeline() -> services.PipelineConfig:
    return services.PipelineConfig(
        workers=checks.SCENARIO.capacity,  # 20: all the service can take, no more
        # Above the processing time with room for scheduling jitter, but short, because a
        # crashed worker's document waits this long before anyone retries it.
        visibility_timeout=2.5 * PROCESSING_TIME,
        max_receive_count=3,  # three tries, then the dead-letter queue
        handler=process_document,
    )
