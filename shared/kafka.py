"""The broker factory and the one way services publish events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.message import StreamMessage
from prometheus_client import CollectorRegistry, Counter

from shared.deadletter import DeadLetterPolicy
from shared.envelope import Envelope, OutgoingEvent, parse_event
from shared.logs import broker_logger
from shared.settings import KafkaSettings
from shared.tracing import TraceMiddleware

# The largest record a service's producer sends (see make_broker).
DEAD_LETTER_MAX_BYTES = 64 * 1024 * 1024
# How long a producer waits for more records before a request (measured at 500 applications/s on the whole system:
# 2 ms p99 284 ms, 10 ms 297 ms, 25 ms 453 ms).
LINGER_MS = 2


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
) -> tuple[EventBroker, DeadLetterPolicy]:
    """A FastStream Kafka broker with ``acks=all``, Prometheus metrics and retry-then-dead-letter handling, and the
    service's event producer."""
    dead_letters = DeadLetterPolicy(
        retries=settings.dlq_retries, backoff_s=settings.dlq_backoff_s, registry=registry, service=service,
        max_event_bytes=settings.max_event_bytes,
    )
    broker = EventBroker(
        settings.bootstrap_servers,
        acks="all",
        enable_idempotence=settings.idempotence,
        client_id=f"ozg-{service}",
        security=settings.security(),
        request_timeout_ms=settings.request_timeout_ms,
        metadata_max_age_ms=settings.metadata_max_age_ms,
        graceful_timeout=settings.graceful_timeout_s,
        linger_ms=LINGER_MS,
        # The broker's message.max.bytes is the limit that counts: the client must not refuse to dead-letter a
        # record the broker accepted and delivered (aiokafka's own default is 1 MiB).
        max_request_size=DEAD_LETTER_MAX_BYTES,
        decoder=_undecoded,
        parser=_tolerant_parser,
        # Per-message logs stay at DEBUG: on the hot path they cost more than the work itself.
        logger=broker_logger(),
        log_level=logging.DEBUG,
        middlewares=(
            TraceMiddleware,
            KafkaPrometheusMiddleware(registry=registry, app_name=service),
            dead_letters,
        ),
    )
    broker.events = EventProducer(settings, client_id=f"ozg-{service}-events", registry=registry)
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


# Records of one topic partition go out together up to this many bytes: aiokafka's default of 16 KiB would split a
# routing batch (250 cases, about 650 KB over the partitions) into dozens; 1 MiB was no faster and took routing's
# peak RSS 2-3 MB closer to its bar. A larger record goes alone, as in Kafka.
BATCH_BYTES = 256 * 1024


class _Pending:
    """A record batch of one topic partition being filled, and the delivery its records' senders wait for."""

    __slots__ = ("builder", "delivered", "topic")

    def __init__(self, builder: BatchBuilder, topic: str) -> None:
        self.builder = builder
        self.topic = topic
        self.delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Every sender of the batch may have given up waiting (its own time limit): the outcome is then unread.
        self.delivered.add_done_callback(lambda f: f.cancelled() or f.exception())

    def fail(self, error: BaseException) -> None:
        if not self.delivered.done():
            self.delivered.set_exception(error)

    def settle(self, sent: asyncio.Future[Any], published: Counter) -> None:
        if sent.cancelled():
            self.fail(ConnectionError("the producer stopped before the broker answered"))
        elif (error := sent.exception()) is not None:
            self.fail(error)
        elif not self.delivered.done():
            self.delivered.set_result(None)
            published.labels(self.topic).inc(self.builder.record_count())


class EventProducer:
    """The service's producer of events: records in aiokafka's record batches, one per topic partition.

    Every event is published through here, never one by one through FastStream. Measured with 1.3 KB events on the
    bench machine, in CPU per record: FastStream's publish (middlewares, a command per record) 120-150 µs, aiokafka's
    ``send`` alone (a future and an accumulator entry per record) 60-75 µs, appending to a record batch 12-20 µs.
    FastStream's own ``publish_batch`` gives every record the same headers, and binary-mode CloudEvents need each
    record's own. Records sent in the same turn of the event loop, by one caller or by several (concurrent
    requests), share batches, so the broker also gets fewer and larger produce requests. Partitions are chosen by
    aiokafka's default partitioner, the same murmur2 of the key as every other Kafka client: a case's events stay
    in one partition.
    """

    def __init__(self, settings: KafkaSettings, *, client_id: str, registry: CollectorRegistry) -> None:
        self._settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        # Each topic's partitions, read once per connection: a new partition is taken up after the next reconnect.
        self._partitions: dict[str, list[int]] = {}
        self._open: dict[tuple[str, int], _Pending] = {}
        self._full: list[tuple[tuple[str, int], _Pending]] = []
        self._flush: asyncio.Task[None] | None = None
        # Topics this connection has published to. Tansu 0.6 answers NotLeaderForPartition (until the request times
        # out) when a topic's first records share a produce request with another topic's, so they go alone.
        self._warm: set[str] = set()
        # Held while the service connects afresh: a broker that came back empty gets its topics from ensure_topics
        # first, never from the auto-creation a stray publish (or its metadata request) would cause.
        self.held = False
        self._published = Counter("ozg_events_published", "Events the broker acknowledged, by topic", ["topic"],
                                  registry=registry)

    async def start(self) -> None:
        """Connect the producer (again after ``stop``); a started one stays as it is."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=self._settings.idempotence,
            request_timeout_ms=self._settings.request_timeout_ms,
            metadata_max_age_ms=self._settings.metadata_max_age_ms,
            linger_ms=LINGER_MS,
            max_batch_size=BATCH_BYTES,
            max_request_size=DEAD_LETTER_MAX_BYTES,
            **self._settings.client_options(),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Disconnect; what is still unsent fails, and a later ``start`` begins with no topic known."""
        producer, self._producer = self._producer, None
        self._forget_topics()
        unsent, self._full, self._open = [*self._full, *self._open.items()], [], {}
        for _, pending in unsent:
            # (A batch of an event loop that was closed has nobody left waiting.)
            with contextlib.suppress(RuntimeError):
                pending.fail(BrokerHeld("the producer stopped before the batch was sent"))
        if producer is not None:
            await producer.stop()

    def hold(self) -> None:
        """Refuse every event (BrokerHeld) until ``release``."""
        self.held = True

    def release(self) -> None:
        """Publish again after ``hold`` (the topics exist again): every topic counts as new."""
        self.held = False
        self._forget_topics()

    def _forget_topics(self) -> None:
        self._partitions.clear()
        self._warm.clear()

    async def send_all(self, batch: Sequence[tuple[str, OutgoingEvent]]) -> None:
        """Publish the events (topic, event) and wait until the broker acknowledged each (acks=all); any failure
        raises."""
        producer = self._connected()
        for topic in dict.fromkeys(topic for topic, _ in batch):
            if topic not in self._partitions:
                self._partitions[topic] = sorted(await producer.partitions_for(topic))
        rest: list[tuple[str, OutgoingEvent]] = []
        for topic, event in batch:
            if topic in self._warm:
                rest.append((topic, event))
            else:
                await self._send_alone(topic, event)
                self._warm.add(topic)
        deliveries = list(dict.fromkeys(self._append(topic, event) for topic, event in rest))
        if not deliveries:
            return
        loop = asyncio.get_running_loop()
        # (A task left behind by an event loop that was closed will never run again: start another.)
        if self._flush is None or self._flush.done() or self._flush.get_loop() is not loop:
            self._flush = loop.create_task(self._send_open(), name="event producer")
        # Shielded: a sender that gives up (cancelled by its time limit) must not cancel the batch for the others.
        await asyncio.gather(*(asyncio.shield(d) for d in deliveries))

    def _connected(self) -> AIOKafkaProducer:
        if self.held:
            raise BrokerHeld("the service is connecting to its broker afresh")
        if self._producer is None:
            raise BrokerHeld("the service is not connected to its broker")
        return self._producer

    def _partition(self, topic: str, event: OutgoingEvent) -> tuple[str, int]:
        partitions = self._partitions[topic]
        return topic, self._partitioner(event.key, partitions, partitions)

    @staticmethod
    def _add(builder: BatchBuilder, event: OutgoingEvent) -> bool:
        # In the order FastStream writes them (its dead-letter publish does), so a record dead-lettered and replayed
        # comes back header for header; the event id is FastStream's correlation id, one id per event across tools.
        headers = [("content-type", event.headers.get("content-type", "").encode()),
                   ("correlation_id", event.event_id.encode())]
        headers += [(name, value.encode()) for name, value in event.headers.items() if name != "content-type"]
        return builder.append(timestamp=None, key=event.key, value=event.value, headers=headers) is not None

    def _new_batch(self, topic: str, event: OutgoingEvent) -> _Pending:
        # An empty batch takes any record, however large.
        pending = _Pending(self._connected().create_batch(), topic)
        self._add(pending.builder, event)
        return pending

    async def _send_alone(self, topic: str, event: OutgoingEvent) -> None:
        # A new topic's first record: in a batch of its own, sent at once and waited for, not in the shared ones.
        pending = self._new_batch(topic, event)
        await self._send(self._partition(topic, event), pending)
        await asyncio.shield(pending.delivered)

    def _append(self, topic: str, event: OutgoingEvent) -> asyncio.Future[None]:
        tp = self._partition(topic, event)
        pending = self._open.get(tp)
        if pending is None or not self._add(pending.builder, event):
            if pending is not None:
                # Full: it goes as it is; the record starts the next batch.
                self._full.append((tp, pending))
            pending = self._open[tp] = self._new_batch(topic, event)
        return pending.delivered

    async def _send(self, tp: tuple[str, int], pending: _Pending) -> None:
        try:
            sent = await self._connected().send_batch(pending.builder, tp[0], partition=tp[1])
        except Exception as exc:  # noqa: BLE001 - the batch's senders learn it
            pending.fail(exc)
            return
        sent.add_done_callback(lambda done: pending.settle(done, self._published))

    async def _send_open(self) -> None:
        # Runs once the senders of this turn of the event loop appended their records; batches opened while it
        # awaits go out in its next round.
        while self._open or self._full:
            batches = [*self._full, *self._open.items()]
            self._full, self._open = [], {}
            for tp, pending in batches:
                await self._send(tp, pending)


class EventBroker(KafkaBroker):
    """FastStream's Kafka broker for consuming (and dead-lettering), with the service's ``EventProducer`` started and
    stopped along with it."""

    events: EventProducer

    async def start(self) -> None:
        """Start the event producer, then connect and start the subscribers (joining their groups takes a while: the
        service may publish meanwhile, as with FastStream's own producer, which connects first too)."""
        await self.events.start()
        await super().start()

    async def stop(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> None:
        """Stop the event producer, then the subscribers and the connection."""
        try:
            await self.events.stop()
        finally:
            await super().stop(exc_type, exc_val, exc_tb)


def hold(broker: EventBroker) -> None:
    """Refuse every publish through ``broker`` (BrokerHeld) until ``release``."""
    broker.events.hold()


def release(broker: EventBroker) -> None:
    """Publish through ``broker`` again; topics count as new (see EventProducer)."""
    broker.events.release()


async def publish(broker: EventBroker, topic: str, event: OutgoingEvent) -> None:
    """Publish one event and wait until the broker acknowledged it (acks=all)."""
    await broker.events.send_all([(topic, event)])


async def publish_all(broker: EventBroker, batch: Sequence[tuple[str, OutgoingEvent]]) -> None:
    """Publish several events together and wait for every acknowledgement; any failure raises."""
    await broker.events.send_all(batch)
