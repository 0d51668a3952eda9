"""Audit's consumer: every event on every ``ozg.*`` topic except dead letters becomes one chain entry.

Records arrive in batches; each batch is appended in one transaction, in the order of the batch (per partition,
the order of the topic). Poison records are dead-lettered one by one and the rest of the batch is appended.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import Any
from uuid import UUID

import anyio.to_thread
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import InterfaceError, OperationalError

from services.audit.settings import Settings
from services.audit.store import AuditStore, NewEntry
from shared import events, topics
from shared.deadletter import DeadLetterPolicy, batch_records
from shared.envelope import Envelope, InvalidEvent, parse_event
from shared.events import CaseStatus, UnroutableReason
from shared.kafka import group_subscription

log = logging.getLogger(__name__)

# The status an event type implies when its data carries none.
PERSONAL_DATA_DELETED = "personal_data_deleted"
_IMPLIED_STATUS: dict[str, str] = {
    events.SUBMITTED_V1: CaseStatus.SUBMITTED.value,
    events.ROUTED_V1: CaseStatus.ROUTED.value,
    events.UNROUTABLE_V1: CaseStatus.UNROUTABLE.value,
    events.PERSONAL_DATA_DELETED_V1: PERSONAL_DATA_DELETED,
}
_KNOWN_TYPES = frozenset(events.DATA_MODELS)
# Only members of closed vocabularies are kept: a free-text field could carry personal data.
_STATUSES = frozenset(status.value for status in CaseStatus)
_REASONS = frozenset(reason.value for reason in UnroutableReason)
# Why personal data was deleted (de.ozg.personal-data.deleted.v1): retention ran out, or an erasure request.
_DELETION_REASONS = frozenset({"retention", "erasure_request"})
# Column widths of audit_entries: longer attributes make the record a poison message on every database alike.
_LIMITS = {"id": 200, "type": 200, "source": 500, "subject": 200}


def _member(value: Any, allowed: frozenset[str]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def _uuid(value: Any) -> UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return UUID(value)
    except ValueError:
        return None


def entry_of(envelope: Envelope, *, topic: str, partition: int, offset: int, value: bytes | None) -> NewEntry:
    """The chain entry of one event: identity, Kafka position, digest and non-personal query fields only."""
    for name, limit in _LIMITS.items():
        attribute = getattr(envelope, name)
        if attribute is not None and len(attribute) > limit:
            raise InvalidEvent(f"ce_{name} is longer than {limit} characters")
    model = events.DATA_MODELS.get(envelope.type)
    if model is not None:
        # A known type whose data breaks its model is not the event it claims to be; a type audit does not know
        # yet (a newer version) is recorded as it is.
        envelope.data_as(model)
    data = envelope.data
    status = _member(data.get("status"), _STATUSES)
    if status is None and envelope.type in _IMPLIED_STATUS:
        status = _IMPLIED_STATUS[envelope.type]
    reasons = _DELETION_REASONS if envelope.type == events.PERSONAL_DATA_DELETED_V1 else _REASONS
    event_time = envelope.time if envelope.time.tzinfo is not None else envelope.time.replace(tzinfo=UTC)
    return NewEntry(
        event_id=envelope.id,
        event_type=envelope.type,
        source=envelope.source,
        subject=envelope.subject,
        event_time=event_time,
        topic=topic,
        partition=partition,
        offset=offset,
        data_sha256=hashlib.sha256(value or b"").hexdigest(),
        status=status,
        destination_id=_uuid(data.get("destination_id")),
        reason=_member(data.get("reason"), reasons),
    )


async def append_patiently(
    store: AuditStore,
    entries: Sequence[NewEntry],
    *,
    max_delay_s: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[dict[str, Any]]:
    """Append ``entries`` in one transaction, waiting out an unreachable database for as long as it takes.

    The shared middleware would dead-letter the events after a few retries, and the trail would miss valid
    events for good; holding the partitions keeps the trail complete and in order. Cancellation (shutdown) leaves
    the records uncommitted, so they are redelivered. Returns the rows appended (not those already in the chain).
    """
    delay = 0.5
    while True:
        try:
            return await anyio.to_thread.run_sync(store.append_many, entries)
        except (OperationalError, InterfaceError) as exc:
            log.warning("audit database unavailable, retrying",
                        extra={"entries": len(entries), "error": type(exc.orig).__name__, "retry_in_s": delay})
            await sleep(delay)
            delay = min(delay * 2, max_delay_s)


DeadLetter = Callable[["ConsumerRecord[Any, Any]", BaseException], Awaitable[None]]


async def record_batch(
    records: Sequence[ConsumerRecord[Any, Any]],
    store: AuditStore,
    dead_letter: DeadLetter,
    *,
    max_bytes: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[dict[str, Any]]:
    """Append a batch's events in batch order, then dead-letter its poison records one by one.

    Appending first: a crash in between redelivers the batch, the entries are already there (unique ``ce_id``)
    and only the dead letters are sent again. Returns the rows appended.
    """
    entries: list[NewEntry] = []
    poison: list[tuple[ConsumerRecord[Any, Any], InvalidEvent]] = []
    for record in records:
        try:
            envelope = parse_event(record.headers, record.value, record.key, max_bytes=max_bytes)
            entries.append(entry_of(envelope, topic=record.topic, partition=record.partition,
                                    offset=record.offset, value=record.value))
        except InvalidEvent as exc:
            poison.append((record, exc))
    rows = await append_patiently(store, entries, sleep=sleep) if entries else []
    for record, error in poison:
        await dead_letter(record, error)
    return rows


def register(
    broker: KafkaBroker,
    store: AuditStore,
    dead_letters: DeadLetterPolicy,
    settings: Settings,
    registry: CollectorRegistry,
) -> None:
    """Subscribe audit's batch consumer on ``broker``: a pattern subscription, so new topics join by themselves."""
    appended = Counter("ozg_audit_entries", "Entries appended to the audit chain, by event type", ["type"],
                       registry=registry)

    async def on_batch(msg: KafkaMessage) -> None:
        # A failure here is no outage (append_patiently waits those out) but a dead-letter publish or an unexpected
        # database error: the dead-letter middleware redelivers the batch after a pause.
        rows = await record_batch(batch_records(msg), store, dead_letters.dead_letter,
                                  max_bytes=settings.kafka.max_event_bytes)
        for row in rows:
            event_type = row["event_type"]
            appended.labels(event_type if event_type in _KNOWN_TYPES else "other").inc()

    broker.subscriber(
        pattern=topics.AUDITED_PATTERN, **group_subscription(settings.kafka, settings.consumer_group),
        batch=True, max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
    )(on_batch)
