"""A registered destination's topics exist once routing is connected, before its first case, with the partitions
set for destination topics (on the real broker)."""

from __future__ import annotations

import uuid
from pathlib import Path

from services.routing.app import build
from services.routing.models import Destination
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from shared import topics
from shared.settings import KafkaSettings
from tests.support import partition_counts, running, topic_names, wait_until


async def test_registered_destinations_get_their_topics_at_start(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    # Registered while routing was down (or while the broker had lost its state): no API call created its topics.
    destination_id = uuid.uuid4()
    kafka = kafka_settings.model_copy(update={"destination_partitions": kafka_settings.partitions + 1})
    service, app = build(Settings(database_url=f"sqlite:///{tmp_path / 'routing.db'}", kafka=kafka))
    service.migrate()
    RoutingStore(service.engine).upsert_destination(
        Destination(destination_id=destination_id, name="Stadt Kelheim, Bürgerbüro", authority_ars="092730137137",
                    leika_keys=[]))
    wanted = {topics.destination_topic(destination_id), f"{topics.destination_topic(destination_id)}.dlq"}
    assert not wanted & await topic_names(kafka_settings)

    async with running(service, app):
        # Without any case: audit's pattern subscription finds them before the first dispatch.
        await wait_until(lambda: _has(kafka_settings, wanted), timeout_s=15, interval_s=0.2)
    # Their own partition count, not the deployment's default for the other topics.
    counts = await partition_counts(kafka_settings, prefix=topics.destination_topic(destination_id))
    assert counts == dict.fromkeys(wanted, kafka_settings.partitions + 1)


async def _has(kafka: KafkaSettings, wanted: set[str]) -> bool:
    return wanted <= await topic_names(kafka)
