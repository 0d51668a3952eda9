"""Publishing through the broker factory against the real broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaMessage
from prometheus_client import CollectorRegistry

from deploy.local.broker import Tansu
from shared import topics
from shared.envelope import build_event, parse_event
from shared.events import Problem
from shared.kafka import group_subscription, make_broker, publish_all
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
