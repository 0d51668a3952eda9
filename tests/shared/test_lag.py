"""Consumer lag measured against the real broker."""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, generate_latest

from deploy.local.broker import free_port
from services.routing.app import build
from services.routing.settings import Settings
from shared.auth import ClientDirectory
from shared.lag import ConsumerLag
from shared.settings import KafkaSettings
from shared.topics import TopicSpec, ensure_topics
from tests.support import produce


async def test_lag_is_end_offset_minus_committed_offset(kafka_settings: KafkaSettings) -> None:
    topic, group = f"ozg.test.lag.{uuid.uuid4()}", f"ozg-test-{uuid.uuid4().hex[:8]}"
    settings = kafka_settings.model_copy(update={"partitions": 1})
    await ensure_topics(settings, [TopicSpec(topic)])
    for i in range(5):
        await produce(settings, topic, f'{{"n": {i}}}'.encode())
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "")})
    finally:
        await consumer.stop()

    registry = CollectorRegistry()
    nobody = f"ozg-nobody-{uuid.uuid4().hex[:6]}"
    lag = await ConsumerLag(settings, lambda: [group, nobody], registry).measure()
    assert lag == {(group, TopicPartition(topic, 0)): 3}
    exported = generate_latest(registry).decode()
    assert f'ozg_consumer_lag{{group="{group}",partition="0",topic="{topic}"}} 3.0' in exported
    assert nobody not in exported


def test_a_service_measures_every_group_it_consumes_with(tmp_path: Path) -> None:
    service, _ = build(Settings(database_url=f"sqlite:///{tmp_path / 'routing.db'}"))
    # The dispatcher's group and the withdrawals' group: the lag alert must see both.
    assert service.consumer_groups() == ["ozg-routing", "ozg-routing-status"]
    assert service.lag.groups() == service.consumer_groups()
    service.engine.dispose()


async def test_a_probe_while_the_broker_is_away_leaves_no_client_open(caplog: pytest.LogCaptureFixture) -> None:
    """Found by the broker-outage test: every failed probe (each lag interval of an outage) left a consumer open."""
    nobody = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    lag = ConsumerLag(nobody, lambda: ["ozg-test"], CollectorRegistry())
    directory = ClientDirectory()
    with pytest.raises(KafkaConnectionError):
        await lag.measure()
    with pytest.raises(KafkaConnectionError):
        await directory.catch_up(nobody, timeout_s=1)
    gc.collect()
    await asyncio.sleep(0)
    assert "Unclosed AIOKafkaConsumer" not in caplog.text
