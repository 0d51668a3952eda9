"""Publishing through the broker factory against the real broker."""

from __future__ import annotations

import uuid

from prometheus_client import CollectorRegistry

from deploy.local.broker import Tansu
from shared import topics
from shared.envelope import build_event, parse_event
from shared.events import Problem
from shared.kafka import make_broker, publish_all
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
        for topic in (topics.ROUTED, new):
            records = await consume(settings, topic, 1)
            assert parse_event(records[0].headers, records[0].value).data["title"] == topic
    finally:
        broker_process.stop()
