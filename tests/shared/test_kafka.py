"""Publishing through the broker factory against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaMessage
from prometheus_client import CollectorRegistry

from deploy.local.broker import Tansu
from shared import topics
from shared.envelope import OutgoingEvent, build_event, parse_event
from shared.events import Problem
from shared.kafka import BrokerHeld, EventBroker, group_subscription, hold, make_broker, publish, publish_all, release
from shared.logs import configure_logging
from shared.settings import KafkaSettings
from shared.topics import TopicSpec, ensure_topics
from tests.support import consume


async def test_publish_all_reaches_a_new_topic_together_with_a_known_one() -> None:
    # A fresh broker, as routing meets it: its first dispatch to a destination shares the batch with `routed`.
    broker_process = Tansu().start()
    try:
        # A short request timeout turns a refused batch into a quick failure instead of a long hang.
        settings = KafkaSettings(bootstrap_servers=broker_process.bootstrap, request_timeout_ms=3000)
        await ensure_topics(settings, topics.standard_topics())
        broker, _ = make_broker(settings, service="test", registry=CollectorRegistry())
        await broker.start()
        new = topics.destination_topic(uuid.uuid4())
        try:
            await ensure_topics(settings, [TopicSpec(new)])
            batch = [
                (topic, build_event(event_type="t.v1", source="/test", subject="c", data=Problem(title=topic)))
                for topic in (topics.ROUTED, new)
            ]
            await publish_all(broker, batch)
        finally:
            await broker.stop()
        for topic, (_, event) in zip((topics.ROUTED, new), batch, strict=True):
            records = await consume(settings, topic, 1)
            assert parse_event(records[0].headers, records[0].value).data["title"] == topic
            # FastStream's correlation id is the event's own id, not one generated per publish.
            assert dict(records[0].headers)["correlation_id"] == event.event_id.encode()
    finally:
        broker_process.stop()


async def test_group_subscribers_take_the_fetch_wait_from_the_settings(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tansu answers a waiting fetch only near the end of its wait: the setting must reach every group consumer.
    seen: list[int] = []
    original = AIOKafkaConsumer.__init__

    def recording(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> None:
        seen.append(kwargs.get("fetch_max_wait_ms", 500))
        original(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, "__init__", recording)
    settings = kafka_settings.model_copy(update={"fetch_max_wait_ms": 37})
    await ensure_topics(settings, topics.standard_topics())
    broker, _ = make_broker(settings, service="test", registry=CollectorRegistry())

    async def handle(_msg: KafkaMessage) -> None:
        pass

    broker.subscriber(topics.ROUTED, **group_subscription(settings, f"test-{uuid.uuid4()}"))(handle)
    await broker.start()
    try:
        assert seen == [37]
    finally:
        await broker.stop()


def _event(case: str, title: str = "t") -> OutgoingEvent:
    return build_event(event_type="t.v1", source="/test", subject=case, data=Problem(title=title))


@contextlib.asynccontextmanager
async def _started(settings: KafkaSettings, *topic_names: str) -> AsyncIterator[tuple[EventBroker, CollectorRegistry]]:
    await ensure_topics(settings, [TopicSpec(name) for name in topic_names])
    registry = CollectorRegistry()
    broker, _ = make_broker(settings, service="test", registry=registry)
    await broker.start()
    try:
        yield broker, registry
    finally:
        await broker.stop()


@pytest.fixture
def sent_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The record count of every batch producers hand to aiokafka from now on."""
    sent: list[int] = []
    original = AIOKafkaProducer.send_batch

    async def counting(self: AIOKafkaProducer, batch: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(batch.record_count())
        return await original(self, batch, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaProducer, "send_batch", counting)
    return sent


async def test_events_land_on_the_partition_of_their_key_in_order(
    kafka_settings: KafkaSettings, sent_batches: list[int]
) -> None:
    # The partition every Kafka client picks for the key (murmur2), so a case's events share one partition whoever
    # publishes them; in the order they were given, also across a batch that filled up.
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    # Three cases per partition, so both partitions take records (random keys all fell on one now and then).
    every = list(range(kafka_settings.partitions))
    by_partition: dict[int, list[str]] = {p: [] for p in every}
    while any(len(found) < 3 for found in by_partition.values()):
        case = str(uuid.uuid4())
        by_partition[DefaultPartitioner()(case.encode(), every, every)].append(case)
    cases = [case for found in by_partition.values() for case in found[:3]]
    batch = [(topic, _event(case, f"{case}-{n}")) for n in range(20) for case in cases]
    async with _started(kafka_settings, topic) as (broker, registry):
        await publish_all(broker, batch[:1])  # the topic's first record goes alone; then it is warm
        # A producer with small record batches: the rest fills several per partition.
        small = make_broker(kafka_settings, service="small", registry=CollectorRegistry())[0]
        with mock.patch("shared.kafka.BATCH_BYTES", 4096):
            await small.start()
        try:
            sent_batches.clear()
            await publish_all(small, batch[1:])
        finally:
            await small.stop()
        assert sum(sent_batches) == len(batch) - 1
        assert len(sent_batches) > kafka_settings.partitions + 1  # several full batches per partition
        assert registry.get_sample_value("ozg_events_published_total", {"topic": topic}) == 1
    records = await consume(kafka_settings, topic, len(batch))
    partitions = sorted({r.partition for r in records})
    assert len(partitions) == kafka_settings.partitions
    expected = DefaultPartitioner()
    for record in records:
        assert record.partition == expected(record.key, partitions, partitions)
    for case in cases:
        titles = [json.loads(r.value)["title"] for r in records if r.key == case.encode()]
        assert titles == [f"{case}-{n}" for n in range(20)]


async def test_concurrent_senders_share_record_batches(kafka_settings: KafkaSettings, sent_batches: list[int]) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    async with _started(kafka_settings, topic) as (broker, registry):
        await publish(broker, topic, _event("warm"))
        sent_batches.clear()
        await asyncio.gather(*(publish(broker, topic, _event(f"case-{n}")) for n in range(50)))
        # One batch per partition for the 50 requests, not one per request.
        assert sum(sent_batches) == 50
        assert len(sent_batches) <= kafka_settings.partitions
        assert registry.get_sample_value("ozg_events_published_total", {"topic": topic}) == 51
    assert len(await consume(kafka_settings, topic, 51)) == 51


async def test_a_sender_that_gives_up_does_not_cancel_the_batch_it_shares(kafka_settings: KafkaSettings) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    async with _started(kafka_settings, topic) as (broker, _):
        await publish(broker, topic, _event("warm"))
        impatient = asyncio.create_task(publish(broker, topic, _event("same", "impatient")))
        patient = asyncio.create_task(publish(broker, topic, _event("same", "patient")))
        await asyncio.sleep(0)  # both appended to the same batch
        impatient.cancel()
        await patient
        with pytest.raises(asyncio.CancelledError):
            await impatient
    titles = [json.loads(r.value)["title"] for r in await consume(kafka_settings, topic, 3)]
    assert titles == ["t", "impatient", "patient"]


async def test_a_held_or_stopped_producer_refuses_events(kafka_settings: KafkaSettings) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    async with _started(kafka_settings, topic) as (broker, _):
        hold(broker)
        with pytest.raises(BrokerHeld):
            await publish(broker, topic, _event("c"))
        release(broker)
        await publish(broker, topic, _event("c"))
    with pytest.raises(BrokerHeld):
        await publish(broker, topic, _event("c"))


async def test_stopping_fails_what_is_not_sent_yet(kafka_settings: KafkaSettings) -> None:
    topic = f"test.events.{uuid.uuid4().hex[:8]}"
    async with _started(kafka_settings, topic) as (broker, _):
        await publish(broker, topic, _event("warm"))
        waiting = asyncio.create_task(publish(broker, topic, _event("late")))
        await asyncio.sleep(0)  # appended to an open batch, not handed to aiokafka yet
        await broker.events.stop()
        with pytest.raises(BrokerHeld, match="before the batch was sent"):
            await waiting
    assert [r.key for r in await consume(kafka_settings, topic, 1)] == [b"warm"]
    with pytest.raises(AssertionError, match="only 1 of 2"):  # and the refused one never arrives
        await consume(kafka_settings, topic, 2, timeout_s=2)


async def test_a_failing_handler_is_logged_as_json_without_the_data_its_error_quotes(
    kafka_settings: KafkaSettings, capfd: pytest.CaptureFixture[str]
) -> None:
    # FastStream logs a handler's failure as "Type: message"; through its own logger that line bypassed the
    # service's JSON format and redaction, and a database error quotes the row it refused.
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", json=True, service="test")
    topic = f"test.log.{uuid.uuid4().hex}"
    await ensure_topics(kafka_settings, [TopicSpec(topic)])
    broker, _ = make_broker(kafka_settings, service="test", registry=CollectorRegistry())
    failed = asyncio.Event()

    @broker.subscriber(topic, **group_subscription(kafka_settings, f"g-{topic}"), batch=True)
    async def handle(_msg: KafkaMessage) -> None:
        if not failed.is_set():
            failed.set()
            # As a database driver words it: what was refused first, the row it quotes on the next line.
            raise RuntimeError('value too long for type character varying(32)\n'
                               'DETAIL: Failing row contains ("Erika Mustermann", erika@example.org)')

    try:
        await broker.start()
        await publish(broker, topic, build_event(event_type="t.v1", source="/test", subject="c",
                                                 data=Problem(title="x")))
        await asyncio.wait_for(failed.wait(), 30)
        await asyncio.sleep(0.5)
    finally:
        await broker.stop()
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    errors = [line for line in lines if line.get("level") == "ERROR" and line["logger"] == "ozg.faststream"]
    assert errors, lines
    assert errors[0]["message"] == "RuntimeError: value too long for type character varying(32)"
    assert "exc_info" in errors[0]
    assert "Erika" not in json.dumps(lines)
    assert "erika@" not in json.dumps(lines)
