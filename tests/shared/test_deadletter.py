"""The dead-letter policy against the real broker, where the generic poison test (tests/resilience) cannot reach."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RequestTimedOutError
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.deadletter import DeadLetterPolicy, batch_records, transient
from shared.envelope import InvalidEvent, OutgoingEvent
from shared.kafka import BrokerHeld, group_subscription, make_broker, publish
from shared.settings import KafkaSettings
from shared.topics import TopicSpec, dlq_topic, ensure_topics
from tests.support import consume, produce, wait_until


async def test_a_value_even_the_dead_letter_topic_refuses_leaves_a_record_naming_where_it_is(
    kafka_settings: KafkaSettings,
) -> None:
    """Dead-lettered without its value rather than redelivered forever, which would stop the partition."""
    topic = f"ozg.test.{uuid.uuid4().hex}"
    await ensure_topics(kafka_settings, [TopicSpec(topic), TopicSpec(dlq_topic(topic))])
    # A producer that refuses what the broker delivered: as one with aiokafka's default 1 MiB would a larger value.
    broker = KafkaBroker(kafka_settings.bootstrap_servers, max_request_size=2048)
    policy = DeadLetterPolicy(retries=0, backoff_s=0, registry=CollectorRegistry(), service="test")
    policy.attach(broker)
    await broker.start()
    try:
        value = b"x" * 4096
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=topic, partition=1, offset=42, timestamp=0, timestamp_type=0, key=b"k", value=value,
            checksum=None, serialized_key_size=1, serialized_value_size=len(value),
            headers=[("ce_id", b"event-1")],
        )
        await policy.dead_letter(record, InvalidEvent("the value has 4096 bytes, more than the limit of 1024"))
    finally:
        await broker.stop()
    [dead] = await consume(kafka_settings, dlq_topic(topic), 1)
    headers = {name: bytes(v).decode() for name, v in dead.headers}
    assert not dead.value
    assert headers["x-ozg-dlq-value-omitted"] == "4096"
    assert (headers["x-ozg-dlq-topic"], headers["x-ozg-dlq-partition"], headers["x-ozg-dlq-offset"]) == (
        topic, "1", "42")
    assert headers["x-ozg-dlq-error"] == "InvalidEvent"
    assert headers["ce_id"] == "event-1"


async def test_the_reason_header_never_quotes_the_input(kafka_settings: KafkaSettings) -> None:
    """A handler's error may quote data (a database's DETAIL line): only its first line becomes the reason."""
    topic = f"ozg.test.{uuid.uuid4().hex}"
    await ensure_topics(kafka_settings, [TopicSpec(topic), TopicSpec(dlq_topic(topic))])
    broker = KafkaBroker(kafka_settings.bootstrap_servers)
    policy = DeadLetterPolicy(retries=0, backoff_s=0, registry=CollectorRegistry(), service="test")
    policy.attach(broker)
    await broker.start()
    try:
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=topic, partition=0, offset=7, timestamp=0, timestamp_type=0, key=b"k", value=b"{}",
            checksum=None, serialized_key_size=1, serialized_value_size=2, headers=[],
        )
        error = ValueError('duplicate key value violates unique constraint\nDETAIL: Key (name)=(Erika Mustermann)')
        await policy.dead_letter(record, error)
    finally:
        await broker.stop()
    [dead] = await consume(kafka_settings, dlq_topic(topic), 1)
    headers = {name: bytes(v).decode() for name, v in dead.headers}
    assert headers["x-ozg-dlq-reason"] == "duplicate key value violates unique constraint"
    assert headers["x-ozg-dlq-error"] == "ValueError"


async def test_a_database_outage_is_waited_out_while_other_failures_are_dead_lettered(
    kafka_settings: KafkaSettings,
) -> None:
    """A valid event that meets a database restart keeps its partition waiting instead of going to the ``.dlq``."""
    topic = f"ozg.test.{uuid.uuid4().hex}"
    await ensure_topics(kafka_settings, [TopicSpec(topic), TopicSpec(dlq_topic(topic))])
    broker, _ = make_broker(kafka_settings, service="test", registry=CollectorRegistry())
    calls: dict[str, int] = {}
    done: dict[str, asyncio.Event] = {"outage": asyncio.Event(), "bug": asyncio.Event()}
    # More failures than the policy retries (kafka_settings.dlq_retries), then the handler would succeed.
    failures = kafka_settings.dlq_retries + 3

    @broker.subscriber(topic, **group_subscription(kafka_settings, f"g-{topic}"))
    async def handle(msg: KafkaMessage) -> None:
        kind = bytes(msg.body).decode()
        calls[kind] = calls.get(kind, 0) + 1
        if calls[kind] <= failures:
            if kind == "outage":
                raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
            raise ValueError("a fault of the handler")
        done[kind].set()

    await broker.start()
    try:
        for kind in ("bug", "outage"):
            await publish(broker, topic, OutgoingEvent(key=b"k", value=kind.encode(), headers={},
                                                       event_id=kind, event_type="t.v1"))
        await asyncio.wait_for(done["outage"].wait(), 30)
    finally:
        await broker.stop()
    assert calls["outage"] == failures + 1
    assert calls["bug"] == kafka_settings.dlq_retries + 1
    assert not done["bug"].is_set()
    dead = await consume(kafka_settings, dlq_topic(topic), 1)
    assert [bytes(record.value or b"") for record in dead] == [b"bug"]


async def test_a_record_that_fails_its_batch_for_ever_is_dead_lettered_and_the_rest_take_effect(
    kafka_settings: KafkaSettings,
) -> None:
    """A value no check foresaw (the database refuses it, say) failed its batch at every redelivery; after the
    policy's retries the batch is handled record by record."""
    topic = f"ozg.test.{uuid.uuid4().hex}"
    await ensure_topics(kafka_settings.model_copy(update={"partitions": 1}),
                        [TopicSpec(topic), TopicSpec(dlq_topic(topic))])
    broker, _ = make_broker(kafka_settings, service="test", registry=CollectorRegistry())
    handled: list[bytes] = []
    batches: list[int] = []

    @broker.subscriber(topic, **group_subscription(kafka_settings, f"g-{topic}"), batch=True, max_records=10,
                       batch_timeout_ms=500)
    async def handle(msg: KafkaMessage) -> None:
        values = [bytes(record.value or b"") for record in batch_records(msg)]
        batches.append(len(values))
        if b"refused" in values:
            raise ValueError("value too long for type character varying(32)")
        handled.extend(values)

    for value in (b"first", b"refused", b"second"):  # in one partition, before the consumer starts: one batch
        await produce(kafka_settings, topic, value, key=b"k")
    await broker.start()
    try:
        await wait_until(lambda: handled == [b"first", b"second"], timeout_s=30)
    finally:
        await broker.stop()
    assert batches[0] == 3
    dead = await consume(kafka_settings, dlq_topic(topic), 1)
    assert [bytes(record.value or b"") for record in dead] == [b"refused"]
    assert dict(dead[0].headers)["x-ozg-dlq-error"] == b"ValueError"


def test_what_is_waited_out_rather_than_dead_lettered() -> None:
    assert transient(OperationalError("SELECT 1", {}, ConnectionRefusedError()))
    assert transient(BrokerHeld("reconnecting"))
    assert transient(KafkaTimeoutError())
    assert transient(RequestTimedOutError())
    assert not transient(ValueError("a fault of the handler"))
    assert not transient(IntegrityError("INSERT", {}, ValueError("duplicate")))
    assert not transient(MessageSizeTooLargeError())
