"""The status loop (SPEC §4): back offices report status changes, and routing applies the applicant's withdrawals.

A destination's report and intake's withdrawal both change ``routed_cases.status`` by compare-and-set on the status
they saw, so of two concurrent changes of one case exactly one wins. Routing follows ``ozg.cases.status`` for the
withdrawals intake publishes and forwards each applied one onto the destination's own topic, so the back office
learns it like any case event.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio.to_thread
from faststream.kafka import KafkaMessage

from services.routing.lifecycle import may_withdraw
from services.routing.models import RoutedCase
from services.routing.registry import RoutingState
from services.routing.settings import Settings
from shared import events, topics
from shared.envelope import InvalidEvent, OutgoingEvent, build_event, derived_event_id
from shared.events import CaseStatus, CaseStatusChanged
from shared.kafka import group_subscription, publish_all, read_event
from shared.runtime import Service

log = logging.getLogger(__name__)

SOURCE = "/ozg/routing"
FORWARD = "forward"


def status_event(data: CaseStatusChanged, event_id: str | None = None) -> OutgoingEvent:
    """A ``de.ozg.case.status-changed.v1`` event published by routing."""
    return build_event(event_type=events.STATUS_CHANGED_V1, source=SOURCE, subject=str(data.case_id),
                       data=data, time=data.changed_at, event_id=event_id)


def forwarded_withdrawal(cause_id: str, withdrawal: CaseStatusChanged, case: RoutedCase,
                         previous: CaseStatus) -> OutgoingEvent:
    """The copy of a withdrawal for the destination's topic, with a deterministic id derived from the original."""
    data = withdrawal.model_copy(update={
        "destination_id": case.destination_id, "leika_key": withdrawal.leika_key or case.leika_key,
        "previous_status": previous,
    })
    return status_event(data, derived_event_id(cause_id, events.STATUS_CHANGED_V1, FORWARD))


def register(service: Service, state: RoutingState, settings: Settings) -> None:
    """Follow ``ozg.cases.status`` for withdrawals (own consumer group beside the dispatcher's)."""
    store = state.store

    async def on_status(msg: KafkaMessage) -> None:
        envelope = read_event(msg)
        if envelope.type != events.STATUS_CHANGED_V1:
            raise InvalidEvent(f"routing does not expect {envelope.type} on {topics.CASE_STATUS}")
        change = envelope.data_as(CaseStatusChanged)
        if change.status != CaseStatus.WITHDRAWN:
            return  # the back offices' own reports, published by routing itself
        if await anyio.to_thread.run_sync(store.status_processed, envelope.id):
            return
        case = await anyio.to_thread.run_sync(store.case, change.case_id)
        if case is None:
            log.warning("withdrawal of a case routing does not know", extra={"case_id": str(change.case_id)})
            await anyio.to_thread.run_sync(store.mark_status_processed, envelope.id)
            return
        previous = CaseStatus(case.status)  # loaded from the database as a plain string
        if previous == CaseStatus.WITHDRAWN:
            previous = change.previous_status or previous
        else:
            if not may_withdraw(previous):
                log.warning("withdrawal too late, ignored",
                            extra={"case_id": str(change.case_id), "status": previous.value})
                await anyio.to_thread.run_sync(store.mark_status_processed, envelope.id)
                return
            now = datetime.now(UTC)
            if not await anyio.to_thread.run_sync(store.transition, change.case_id, previous,
                                                  CaseStatus.WITHDRAWN, now):
                # A destination changed the case meanwhile: redelivered, the event is decided on the new status.
                raise RuntimeError("case changed concurrently; retrying the withdrawal")
        # The status is withdrawn (now, or by an earlier delivery that crashed before forwarding): forward it.
        # The derived id makes a repeated forward a duplicate every consumer drops.
        if case.destination_id is not None:
            await state.ensure_topic(settings.kafka, case.destination_id)
            await publish_all(service.broker, [(topics.destination_topic(case.destination_id),
                                                forwarded_withdrawal(envelope.id, change, case, previous))])
        await anyio.to_thread.run_sync(store.mark_status_processed, envelope.id)

    broker = service.broker
    broker.subscriber(
        topics.CASE_STATUS, **group_subscription(settings.kafka, f"{settings.consumer_group}-status"),
    )(on_status)
