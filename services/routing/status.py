"""The status loop (SPEC §4): routing follows ``ozg.cases.status`` for the withdrawals intake publishes.

A destination's report (``POST /v1/cases/{case_id}/status``, in ``api.py``) and intake's withdrawal both change
``routed_cases.status`` by compare-and-set on the status they saw, so of two concurrent changes of one case exactly
one wins. Each applied withdrawal is forwarded onto the destination's own topic and pushed to its webhook
(``withdrawals.py``), so the back office learns it like any case event.
"""

from __future__ import annotations

import logging

import anyio.to_thread
from faststream.kafka import KafkaMessage

from services.routing.publishing import OutboxPublisher
from services.routing.settings import Settings
from services.routing.withdrawals import Withdrawn
from shared import events, topics
from shared.envelope import InvalidEvent
from shared.events import CaseStatus, CaseStatusChanged
from shared.kafka import group_subscription, read_event
from shared.runtime import Service

log = logging.getLogger(__name__)


def register(service: Service, publisher: OutboxPublisher, settings: Settings) -> None:
    """Follow ``ozg.cases.status`` for withdrawals (own consumer group beside the dispatcher's)."""
    withdrawals = publisher.withdrawals

    async def on_status(msg: KafkaMessage) -> None:
        envelope = read_event(msg)
        if envelope.type != events.STATUS_CHANGED_V1:
            raise InvalidEvent(f"routing does not expect {envelope.type} on {topics.CASE_STATUS}")
        change = envelope.data_as(CaseStatusChanged)
        if change.status != CaseStatus.WITHDRAWN:
            return  # the back offices' own reports and refused withdrawals, published by routing itself
        outcome = await anyio.to_thread.run_sync(withdrawals.receive, envelope.id, change)
        if outcome == Withdrawn.EARLY:
            # The dispatcher may have recorded the case since we looked: apply it now rather than at the sweep.
            applied = await anyio.to_thread.run_sync(withdrawals.apply_early, [change.case_id])
            if not applied:
                log.info("withdrawal before routing, kept until the case is routed",
                         extra={"case_id": str(change.case_id)})
                return
        elif outcome not in (Withdrawn.APPLIED, Withdrawn.TOO_LATE):
            return
        # Published right away; if the broker is away, the outbox sweep does it (the withdrawal stays applied).
        await publisher.flush(str(change.case_id), timeout_s=settings.status_publish_timeout_s)

    service.broker.subscriber(
        topics.CASE_STATUS, **group_subscription(settings.kafka, f"{settings.consumer_group}-status"),
    )(on_status)
