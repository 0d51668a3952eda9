"""The broker factory and the one way services publish events."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry

from shared.deadletter import DeadLetterPolicy
from shared.envelope import Envelope, OutgoingEvent, parse_event
from shared.settings import KafkaSettings
from shared.tracing import TraceMiddleware

# The largest record a service's producer sends (see make_broker).
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024


async def _undecoded(msg: StreamMessage[Any]) -> bytes:
    # Handlers read the CloudEvent themselves (read_event); FastStream's own JSON decoding would parse every
    # value twice and turn a malformed one into an error outside the dead-letter path.
    return msg.body


class _LenientBytes(bytes):
    """A header value FastStream can always ``.decode()``: it decodes every header before any middleware runs,
    so one non-UTF-8 value would fail the record outside the dead-letter path and redeliver it forever. Our own
    parser (``envelope.parse_event``) still decodes strictly and dead-letters such a record."""

    def decode(self, encoding: str = "utf-8", errors: str = "replace") -> str:
        return bytes(self).decode(encoding, errors)


def _lenient(record: ConsumerRecord[Any, Any]) -> ConsumerRecord[Any, Any]:
    # In place: dataclasses.replace() cost more than the rest of the parser hook, on every record.
    record.headers = [(name, _LenientBytes(value or b"")) for name, value in record.headers or ()]
    return record


async def _tolerant_parser(
    msg: ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[Any], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    if isinstance(msg, tuple):
        return await original(tuple(_lenient(record) for record in msg))
    return await original(_lenient(msg))


def make_broker(
    settings: KafkaSettings, *, service: str, registry: CollectorRegistry
) -> tuple[KafkaBroker, DeadLetterPolicy]:
    """A FastStream Kafka broker with ``acks=all``, Prometheus metrics and retry-then-dead-letter handling."""
    dead_letters = DeadLetterPolicy(
        retries=settings.dlq_retries, backoff_s=settings.dlq_backoff_s, registry=registry, service=service,
        max_event_bytes=settings.max_event_bytes,
    )
    broker = KafkaBroker(
        settings.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.idempotence,
        client_id=f"ozg-{service}",
        request_timeout_ms=settings.request_timeout_ms,
        metadata_max_age_ms=settings.metadata_max_age_ms,
        graceful_timeout=settings.graceful_timeout_s,
        linger_ms=2,
        # The broker's message.max.bytes is the limit that counts: the client must not refuse to dead-letter a
        # record the broker accepted and delivered (aiokafka's own default is 1 MiB).
        max_request_size=DEAD_LETTER_MAX_BYTES,
        decoder=_undecoded,
        parser=_tolerant_parser,
        # Per-message logs stay at DEBUG: on the hot path they cost more than the work itself.
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,
        middlewares=(
            TraceMiddleware,
            KafkaPrometheusMiddleware(registry=registry, app_name=service),
            dead_letters,
        ),
    )
    dead_letters.attach(broker)
    return broker, dead_letters


def group_subscription(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """Subscriber options every consumer group of the project shares.

    At-least-once: the position is committed after the handler, a failure seeks back (the dead-letter middleware
    bounds the retries), and a new group starts at the beginning of its topics rather than skipping them.
    """
    return {
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "session_timeout_ms": settings.session_timeout_ms,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
    }


def read_event(msg: KafkaMessage) -> Envelope:
    """The CloudEvent in a consumed Kafka message; anything else raises InvalidEvent (a poison message)."""
    record = msg.raw_message
    if not isinstance(record, ConsumerRecord):
        raise TypeError("read_event() takes the messages of single-record subscribers")
    return parse_event(record.headers, record.value, record.key)


class BrokerHeld(ConnectionError):
    """The service lost its broker and has not connected afresh yet (``Service.watch_broker``)."""


# Brokers held while their service connects afresh: a broker that came back empty gets its topics from
# ensure_topics first, never from the auto-creation a stray publish (or its metadata request) would cause.
_held: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


def hold(broker: KafkaBroker) -> None:
    """Refuse every publish through ``broker`` (BrokerHeld) until ``release``."""
    _held.add(broker)


def release(broker: KafkaBroker) -> None:
    """Publish through ``broker`` again; topics count as new (see publish_all)."""
    _held.discard(broker)
    _warm_topics.pop(broker, None)


async def publish(broker: KafkaBroker, topic: str, event: OutgoingEvent) -> None:
    """Publish one event and wait until the broker acknowledged it (acks=all)."""
    if broker in _held:
        raise BrokerHeld("the service is connecting to its broker afresh")
    # The event id as FastStream's correlation id: one id per event across tools, and none to generate.
    await broker.publish(event.value, topic, key=event.key, headers=event.headers, correlation_id=event.event_id)


# Topics each broker connection has published to. Tansu 0.6 answers NotLeaderForPartition (until the request
# times out) when a topic's first records share a produce request with another topic's, so they go alone.
_warm_topics: weakref.WeakKeyDictionary[KafkaBroker, set[str]] = weakref.WeakKeyDictionary()


async def publish_all(broker: KafkaBroker, batch: Sequence[tuple[str, OutgoingEvent]]) -> None:
    """Publish several events concurrently and wait for every acknowledgement; any failure raises."""
    if broker in _held:
        raise BrokerHeld("the service is connecting to its broker afresh")
    known = _warm_topics.setdefault(broker, set())
    warm: list[tuple[str, OutgoingEvent]] = []
    for topic, event in batch:
        if topic in known:
            warm.append((topic, event))
        else:
            await publish(broker, topic, event)
            known.add(topic)
    futures = [
        await broker.publish(event.value, topic, key=event.key, headers=event.headers,
                             correlation_id=event.event_id, no_confirm=True)
        for topic, event in warm
    ]
    await asyncio.gather(*futures)
