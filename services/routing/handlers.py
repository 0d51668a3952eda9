"""Routing's consumer: every submitted application is routed and dispatched, or sent to clearing.

Submitted events are consumed in batches. The valid ones are decided, their events published concurrently
(gathered acknowledgements), then all decisions recorded in one transaction; after that, poison records (not a
CloudEvent, wrong type or schema) and records whose decision failed are dead-lettered one by one. If a publish or
the database fails, the handler raises and the whole batch is redelivered; consumers de-duplicate on the
deterministic event ids.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from datetime import UTC, datetime
from uuid import UUID

import anyio.to_thread
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaMessage
from prometheus_client import Counter, Histogram

from services.routing.dispatch import Outcome, decide
from services.routing.publishing import OutboxPublisher
from services.routing.registry import RoutingState
from services.routing.settings import Settings
from shared import events, topics, tracing
from shared.deadletter import batch_records
from shared.envelope import InvalidEvent, parse_event
from shared.events import ApplicationSubmitted
from shared.kafka import group_subscription, publish_all
from shared.runtime import Service

log = logging.getLogger(__name__)


def register(service: Service, state: RoutingState, publisher: OutboxPublisher, settings: Settings) -> None:
    """Subscribe the batch dispatcher on the service's broker."""
    broker = service.broker
    dispatch_latency = Histogram(
        "ozg_dispatch_latency_seconds",
        "From the submitted event's time to the broker's acknowledgement of the dispatched event",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        registry=service.registry,
    )
    decisions = Counter("ozg_routing_decisions", "Routing decisions by outcome and rule", ["outcome", "rule"],
                        registry=service.registry)
    # The highest offset handled per partition. A lower one is a redelivery, or a topic a broker that lost its state
    # (a memory-only Tansu restarted, a cluster rebuilt) has started afresh: then the destinations' topics are gone
    # too and are created again before use, not left to the broker's auto-creation (off in production).
    handled: dict[tuple[str, int], int] = {}

    def record_batch(outcomes: list[tuple[str, Outcome]], case_ids: list[UUID]) -> list[UUID]:
        # One worker-thread call and one connection for the decisions and the look-up of kept withdrawals: each
        # hop costs the event loop a wake-up, each checkout a ping of the database.
        with state.store.engine.begin() as connection:
            state.store.record_many([(event_id, o.case, o.clearing, o.webhook) for event_id, o in outcomes],
                                    connection)
            kept = publisher.withdrawals.kept(connection, case_ids)
        # Withdrawals that overtook their case apply now, once it is committed: after the dispatched events,
        # which are on the topic.
        return publisher.withdrawals.apply_kept(kept)

    async def on_submitted(msg: KafkaMessage) -> None:
        records: tuple[ConsumerRecord[bytes, bytes], ...] = batch_records(msg)
        if any(record.offset <= handled.get((record.topic, record.partition), -1) for record in records):
            state.forget_topics()
        for record in records:
            handled[(record.topic, record.partition)] = max(record.offset,
                                                            handled.get((record.topic, record.partition), -1))
        poison: list[tuple[ConsumerRecord[bytes, bytes], BaseException]] = []
        parsed: list[tuple[ConsumerRecord[bytes, bytes], str, ApplicationSubmitted]] = []
        for record in records:
            try:
                envelope = parse_event(record.headers, record.value, record.key,
                                       max_bytes=settings.kafka.max_event_bytes)
                if envelope.type != events.SUBMITTED_V1:
                    raise InvalidEvent(f"routing does not expect {envelope.type} on {topics.SUBMITTED}")
                parsed.append((record, envelope.id, envelope.data_as(ApplicationSubmitted)))
            except InvalidEvent as exc:
                poison.append((record, exc))
        try:
            done = await anyio.to_thread.run_sync(state.store.processed_among, [p[1] for p in parsed])
            outcomes: list[tuple[str, Outcome]] = []
            for record, event_id, application in parsed:
                if event_id in done:
                    continue
                done.add(event_id)  # the same event twice in one batch
                try:
                    # Each record's trace continues in the events it causes.
                    with tracing.consumed(record):
                        outcome = decide(event_id, application, state.directory, state.rules,
                                         state.destinations_for)
                except Exception as exc:  # noqa: BLE001 - a decision that fails would fail again: dead-letter it
                    poison.append((record, exc))
                    continue
                outcomes.append((event_id, outcome))
            for destination_id in {o.case.destination_id for _, o in outcomes if o.case.destination_id}:
                await state.ensure_topic(settings.kafka, destination_id)
            # Published before the decisions are recorded: a crash in between re-publishes the same event ids,
            # which every consumer drops as duplicates.
            await publish_all(broker, [item for _, outcome in outcomes for item in outcome.publish])
            withdrawn = await anyio.to_thread.run_sync(
                record_batch, outcomes, [application.case_id for _, _, application in parsed])
            # After the batch took effect, as audit does: a batch that fails is redelivered, and its poison would
            # otherwise reach the .dlq once per attempt.
            for record, error in poison:
                await service.dead_letters.dead_letter(record, error)
        except Exception:
            # Redelivered after a pause by the dead-letter middleware. A destination's topic may be gone with a
            # broker that lost its state: created again on the retry.
            state.forget_topics()
            raise
        for case_id in withdrawn:
            # If the broker is away now, the outbox sweep publishes it later.
            await publisher.flush(str(case_id), timeout_s=settings.status_publish_timeout_s)
        dispatched_at = datetime.now(UTC)
        submitted_at = {event_id: application.submitted_at for _, event_id, application in parsed}
        # Counted once per label pair and batch: labels() takes a lock and a lookup each time.
        tally = Tally((o.case.status.value, o.case.rule or o.case.reason or "") for _, o in outcomes)
        for labels, count in tally.items():
            decisions.labels(*labels).inc(count)
        for event_id, outcome in outcomes:
            if outcome.case.destination_id is not None:
                dispatch_latency.observe((dispatched_at - submitted_at[event_id]).total_seconds())

    broker.subscriber(
        topics.SUBMITTED, **group_subscription(settings.kafka, settings.consumer_group),
        batch=True, max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
    )(on_submitted)
