"""Intake's consumers: keep each case's status and history current from routing's and the back office's events."""

from __future__ import annotations

from uuid import UUID

import anyio.to_thread
from faststream.kafka import KafkaBroker, KafkaMessage

from services.intake.settings import Settings
from services.intake.store import IntakeStore
from shared import events, topics
from shared.envelope import Envelope, InvalidEvent
from shared.events import ApplicationRouted, ApplicationUnroutable, CaseStatus, CaseStatusChanged
from shared.kafka import group_subscription, read_event


def status_of(envelope: Envelope) -> tuple[UUID, CaseStatus, str | None, UUID | None]:
    """The case, new status, applicant-facing detail and (when routed) destination an event carries."""
    if envelope.type == events.ROUTED_V1:
        routed = envelope.data_as(ApplicationRouted)
        return routed.case_id, CaseStatus.ROUTED, routed.authority.name, routed.destination_id
    if envelope.type == events.UNROUTABLE_V1:
        unroutable = envelope.data_as(ApplicationUnroutable)
        return unroutable.case_id, CaseStatus.UNROUTABLE, None, None
    if envelope.type == events.STATUS_CHANGED_V1:
        changed = envelope.data_as(CaseStatusChanged)
        return changed.case_id, changed.status, changed.message, None
    raise InvalidEvent(f"intake does not expect {envelope.type}")


def register(broker: KafkaBroker, store: IntakeStore, settings: Settings) -> None:
    """Subscribe intake's status consumer on ``broker``."""

    async def on_status(msg: KafkaMessage) -> None:
        envelope = read_event(msg)
        case_id, status, detail, destination_id = status_of(envelope)
        await anyio.to_thread.run_sync(
            store.record_status, envelope.id, case_id, status, envelope.time, detail, destination_id
        )

    broker.subscriber(
        topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS,
        **group_subscription(settings.kafka, settings.consumer_group),
    )(on_status)
