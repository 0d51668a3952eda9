"""Intake's consumer: keep each case's status and history current from routing's and the back office's events.

Status events are consumed in batches and applied in one transaction (one per event cost intake, at 500
applications/s, as much CPU as taking the applications). Poison records (not a CloudEvent, an unexpected type, data
that breaks its model) are dead-lettered one by one; if the database fails, the handler raises and the whole batch
is redelivered, and events already applied are recognised by their ids.
"""

from __future__ import annotations

import anyio.to_thread
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaMessage

from services.intake.settings import Settings
from services.intake.store import IntakeStore, StatusChange
from shared import events, topics
from shared.deadletter import batch_records
from shared.envelope import Envelope, InvalidEvent, parse_event
from shared.events import ApplicationRouted, ApplicationUnroutable, CaseStatus, CaseStatusChanged
from shared.kafka import group_subscription
from shared.runtime import Service


def status_of(envelope: Envelope) -> StatusChange:
    """The case, new status, applicant-facing detail and (when routed) destination an event carries."""
    if envelope.type == events.ROUTED_V1:
        routed = envelope.data_as(ApplicationRouted)
        return StatusChange(envelope.id, routed.case_id, CaseStatus.ROUTED, envelope.time, routed.authority.name,
                            routed.destination_id)
    if envelope.type == events.UNROUTABLE_V1:
        unroutable = envelope.data_as(ApplicationUnroutable)
        return StatusChange(envelope.id, unroutable.case_id, CaseStatus.UNROUTABLE, envelope.time)
    if envelope.type == events.STATUS_CHANGED_V1:
        changed = envelope.data_as(CaseStatusChanged)
        return StatusChange(envelope.id, changed.case_id, changed.status, envelope.time, changed.message,
                            refuses_withdrawal=changed.refuses_withdrawal)
    raise InvalidEvent(f"intake does not expect {envelope.type}")


def register(service: Service, store: IntakeStore, settings: Settings) -> None:
    """Subscribe intake's batch status consumer on the service's broker."""

    async def on_status(msg: KafkaMessage) -> None:
        changes: list[StatusChange] = []
        poison: list[tuple[ConsumerRecord[bytes, bytes], InvalidEvent]] = []
        for record in batch_records(msg):
            try:
                envelope = parse_event(record.headers, record.value, record.key,
                                       max_bytes=settings.kafka.max_event_bytes)
                changes.append(status_of(envelope))
            except InvalidEvent as exc:
                poison.append((record, exc))
        await anyio.to_thread.run_sync(store.record_statuses, changes)
        # After the batch took effect, as audit does: a batch that fails is redelivered, and its poison would
        # otherwise reach the .dlq once per attempt.
        for record, error in poison:
            await service.dead_letters.dead_letter(record, error)

    service.broker.subscriber(
        topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS,
        **group_subscription(settings.kafka, settings.consumer_group),
        batch=True, max_records=settings.batch_max_records, batch_timeout_ms=settings.batch_timeout_ms,
    )(on_status)
