"""Audit's consumer: every event on every ``ozg.*`` topic except dead letters becomes one chain entry."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any
from uuid import UUID

import anyio.to_thread
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import InterfaceError, OperationalError

from services.audit.store import AuditStore, NewEntry
from shared import events, topics
from shared.envelope import Envelope, InvalidEvent, parse_event
from shared.events import CaseStatus, UnroutableReason

log = logging.getLogger(__name__)

# The status an event type implies when its data carries none.
_IMPLIED_STATUS = {
    events.SUBMITTED_V1: CaseStatus.SUBMITTED,
    events.ROUTED_V1: CaseStatus.ROUTED,
    events.UNROUTABLE_V1: CaseStatus.UNROUTABLE,
}
_KNOWN_TYPES = frozenset({
    events.SUBMITTED_V1, events.ROUTED_V1, events.UNROUTABLE_V1, events.DISPATCHED_V1, events.STATUS_CHANGED_V1,
    events.NOTIFICATION_SENT_V1, events.NOTIFICATION_FAILED_V1, events.CLIENT_REGISTERED_V1,
    events.CLIENT_REVOKED_V1,
})
# Only members of closed vocabularies are kept: a free-text field could carry personal data.
_STATUSES = frozenset(status.value for status in CaseStatus)
_REASONS = frozenset(reason.value for reason in UnroutableReason)
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
    data = envelope.data
    status = _member(data.get("status"), _STATUSES)
    if status is None and envelope.type in _IMPLIED_STATUS:
        status = _IMPLIED_STATUS[envelope.type].value
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
        reason=_member(data.get("reason"), _REASONS),
    )


async def append_patiently(
    store: AuditStore,
    entry: NewEntry,
    *,
    max_delay_s: float = 30.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Append ``entry``, waiting out an unreachable database for as long as it takes.

    The shared middleware would dead-letter the event after a few retries, and the trail would miss a valid
    event for good; holding the partition keeps the trail complete and in order. Cancellation (shutdown) leaves
    the record uncommitted, so it is redelivered.
    """
    delay = 0.5
    while True:
        try:
            return await anyio.to_thread.run_sync(store.append, entry)
        except (OperationalError, InterfaceError) as exc:
            log.warning("audit database unavailable, retrying",
                        extra={"event_id": entry.event_id, "error": type(exc.orig).__name__, "retry_in_s": delay})
            await sleep(delay)
            delay = min(delay * 2, max_delay_s)


def register(broker: KafkaBroker, store: AuditStore, group_id: str, registry: CollectorRegistry) -> None:
    """Subscribe audit's consumer on ``broker``: a pattern subscription, so new topics join by themselves."""
    appended = Counter("ozg_audit_entries", "Entries appended to the audit chain, by event type", ["type"],
                       registry=registry)

    async def on_event(msg: KafkaMessage) -> None:
        record = msg.raw_message
        if isinstance(record, tuple):
            raise InvalidEvent("audit expects single records, not batches")
        envelope = parse_event(record.headers, record.value, record.key)
        entry = entry_of(envelope, topic=record.topic, partition=record.partition, offset=record.offset,
                         value=record.value)
        if await append_patiently(store, entry):
            appended.labels(entry.event_type if entry.event_type in _KNOWN_TYPES else "other").inc()

    broker.subscriber(
        pattern=topics.AUDITED_PATTERN,
        group_id=group_id, auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR,
    )(on_event)
