"""Routing's consumer: every submitted application is routed and dispatched, or sent to clearing."""

from __future__ import annotations

import anyio.to_thread
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry, Counter

from services.routing.dispatch import decide
from services.routing.registry import RoutingState
from shared import events, topics
from shared.envelope import InvalidEvent
from shared.events import ApplicationSubmitted
from shared.kafka import publish_all, read_event
from shared.settings import KafkaSettings


def register(
    broker: KafkaBroker, state: RoutingState, kafka: KafkaSettings, group_id: str, registry: CollectorRegistry
) -> None:
    """Subscribe the dispatcher on ``broker``."""
    decisions = Counter("ozg_routing_decisions", "Routing decisions by outcome and rule", ["outcome", "rule"],
                        registry=registry)

    async def on_submitted(msg: KafkaMessage) -> None:
        envelope = read_event(msg)
        if envelope.type != events.SUBMITTED_V1:
            raise InvalidEvent(f"routing does not expect {envelope.type} on {topics.SUBMITTED}")
        application = envelope.data_as(ApplicationSubmitted)
        if await anyio.to_thread.run_sync(state.store.already_processed, envelope.id):
            return
        outcome = decide(envelope.id, application, state.directory, state.destinations_for)
        if outcome.case.destination_id is not None:
            await state.ensure_topic(kafka, outcome.case.destination_id)
        # Published before the decision is recorded: a crash in between re-publishes the same event ids,
        # which every consumer drops as duplicates.
        await publish_all(broker, outcome.publish)
        await anyio.to_thread.run_sync(state.store.record, envelope.id, outcome.case)
        decisions.labels(outcome.case.status.value, outcome.case.rule or outcome.case.reason or "").inc()

    broker.subscriber(
        topics.SUBMITTED, group_id=group_id, auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR
    )(on_submitted)
