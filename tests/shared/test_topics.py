"""Topic creation against the real broker: the retention that bounds personal data on the brokers (SPEC §7)."""

from __future__ import annotations

import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import topics
from shared.settings import KafkaSettings
from shared.topics import RETENTION, TopicSpec, ensure_topics

DAY_MS = 86_400_000


async def _configs(settings: KafkaSettings, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    finally:
        await admin.close()
    return {resource[3]: {entry[0]: entry[1] for entry in resource[4]}
            for response in responses for resource in response.resources}


def _unique(spec: TopicSpec) -> TopicSpec:
    return TopicSpec(f"{spec.name}.{uuid.uuid4().hex[:8]}", compacted=spec.compacted, partitions=1)


def test_the_default_retention_is_the_specs_thirty_days() -> None:
    assert KafkaSettings().retention_ms == 30 * DAY_MS
    assert KafkaSettings(retention_days=0.5).retention_ms == DAY_MS // 2
    assert KafkaSettings(retention_days=0).retention_ms is None


async def test_every_created_topic_but_the_compacted_one_keeps_records_for_the_configured_time(
    kafka_settings: KafkaSettings,
) -> None:
    settings = kafka_settings.model_copy(update={"retention_days": 7})
    specs = [_unique(spec) for spec in topics.standard_topics()]
    specs += [_unique(spec) for spec in topics.destination_topic_specs(uuid.uuid4(), settings)]
    await ensure_topics(settings, specs)
    found = await _configs(settings, [spec.name for spec in specs])
    for spec in specs:
        if spec.compacted:  # ozg.clients: the keys' directory must outlive any retention
            assert found[spec.name].get(RETENTION) is None, spec.name
            assert found[spec.name]["cleanup.policy"] == "compact"
        else:
            assert found[spec.name][RETENTION] == str(7 * DAY_MS), spec.name
    assert any(spec.name.startswith(topics.SUBMITTED) for spec in specs)  # the topic with the applications


async def test_no_retention_is_set_when_it_is_left_to_the_broker(kafka_settings: KafkaSettings) -> None:
    settings = kafka_settings.model_copy(update={"retention_days": 0})
    spec = _unique(TopicSpec(topics.SUBMITTED))
    await ensure_topics(settings, [spec])
    assert RETENTION not in (await _configs(settings, [spec.name]))[spec.name]


async def test_an_existing_topic_with_another_retention_is_left_alone_and_named_in_a_warning(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    longer, unset, same = (f"test.retention.{uuid.uuid4().hex[:8]}" for _ in range(3))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(longer, 1, 1, topic_configs={RETENTION: str(365 * DAY_MS)}),
            NewTopic(unset, 1, 1),
            NewTopic(same, 1, 1, topic_configs={RETENTION: str(kafka_settings.retention_ms)}),
        ])
    finally:
        await admin.close()
    with caplog.at_level(logging.WARNING, logger="shared.topics"):
        await ensure_topics(kafka_settings, [TopicSpec(longer), TopicSpec(unset), TopicSpec(same)])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "OZG_KAFKA_RETENTION_DAYS" in warnings[0].getMessage()
    assert getattr(warnings[0], "topics") == sorted([longer, unset])  # noqa: B009
    assert getattr(warnings[0], "retention_ms") == {longer: str(365 * DAY_MS), unset: None}  # noqa: B009
    assert (await _configs(kafka_settings, [longer]))[longer][RETENTION] == str(365 * DAY_MS)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.topics"):
        await ensure_topics(kafka_settings, [TopicSpec(same)])
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]

    # Thousands of destination topics: asked for a few at a time, and named in one line of bounded length.
    monkeypatch.setattr(topics, "DESCRIBE_BATCH", 2)
    monkeypatch.setattr(topics, "LOGGED_TOPICS", 1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.topics"):
        await ensure_topics(kafka_settings, [TopicSpec(longer), TopicSpec(unset), TopicSpec(same)])
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (getattr(warning, "count"), getattr(warning, "topics")) == (2, sorted([longer, unset])[:1])  # noqa: B009
