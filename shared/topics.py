"""Topic names of SPEC §3 and their idempotent creation at start-up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

SUBMITTED = "ozg.applications.submitted"
ROUTED = "ozg.applications.routed"
UNROUTABLE = "ozg.applications.unroutable"
CASE_STATUS = "ozg.cases.status"
NOTIFICATIONS = "ozg.notifications"
CLIENTS = "ozg.clients"
DELETIONS = "ozg.privacy.deletions"
DESTINATION_PREFIX = "ozg.dest."
DLQ_SUFFIX = ".dlq"
RETENTION = "retention.ms"
# Topics per DescribeConfigs request, and named in the warning about their retention.
DESCRIBE_BATCH = 500
LOGGED_TOPICS = 20

# Every topic a consumer reads gets a dead-letter twin.
CONSUMED = (SUBMITTED, ROUTED, UNROUTABLE, CASE_STATUS, NOTIFICATIONS, CLIENTS, DELETIONS)

# Everything except dead letters: what the audit trail follows.
AUDITED_PATTERN = r"^ozg\.(?!.*\.dlq$).*"


def destination_topic(destination_id: UUID | str) -> str:
    """The topic a destination (back office) consumes its dispatched cases from."""
    return f"{DESTINATION_PREFIX}{destination_id}"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}{DLQ_SUFFIX}"


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create, with its non-default configuration."""

    name: str
    compacted: bool = False
    config: dict[str, str] = field(default_factory=dict)
    # None: the deployment's ``KafkaSettings.partitions``.
    partitions: int | None = None


def destination_topic_specs(destination_id: UUID | str, settings: KafkaSettings) -> list[TopicSpec]:
    """A destination's topic and its dead-letter twin (audit consumes destination topics too), each with the
    partitions ``settings`` give destinations."""
    name = destination_topic(destination_id)
    partitions = settings.destination_partitions
    return [TopicSpec(name, partitions=partitions), TopicSpec(dlq_topic(name), partitions=partitions)]


def standard_topics() -> list[TopicSpec]:
    """All fixed topics of SPEC §3 with their dead-letter topics."""
    specs = [TopicSpec(name, compacted=(name == CLIENTS)) for name in CONSUMED]
    specs += [TopicSpec(dlq_topic(name)) for name in CONSUMED]
    return specs


def topic_config(spec: TopicSpec, settings: KafkaSettings) -> dict[str, str]:
    """The configuration a topic is created with: compaction for ``ozg.clients``, else the deployment's retention."""
    config: dict[str, str] = {}
    if spec.compacted:
        config["cleanup.policy"] = "compact"
    elif settings.retention_ms is not None:
        config[RETENTION] = str(settings.retention_ms)
    return {**config, **spec.config}


async def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that don't exist yet; existing ones are left as they are, with a warning where their
    retention differs from the deployment's (see ``check_retention``).

    Nothing relies on broker auto-creation: Apache Kafka in production has it turned off.
    """
    specs = list(specs)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=settings.request_timeout_ms,
        **settings.client_options(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await check_retention(admin, settings, [spec for spec in specs if spec.name in existing])
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions or settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=topic_config(spec, settings),
            )
            for spec in missing
        ]
        # Another replica may win the race; the topic is there, which is all we need.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        log.info("created topics", extra={"topics": [spec.name for spec in missing]})
    finally:
        await admin.close()


async def check_retention(admin: AIOKafkaAdminClient, settings: KafkaSettings, specs: list[TopicSpec]) -> None:
    """Warn about existing topics that keep records longer or shorter than ``settings.retention_days``.

    The services never change an existing topic's configuration (the operator may have had a reason; Kafka's
    AlterConfigs replaces a topic's whole configuration). A topic created before the setting, or by hand, keeps its
    own; the warning names it, and ``kafka-configs.sh --alter --add-config retention.ms=…`` aligns it.
    """
    expected = {spec.name: config[RETENTION] for spec in specs if RETENTION in (config := topic_config(spec, settings))}
    if not expected:
        return
    names = sorted(expected)
    responses = []
    try:
        # All of each topic's settings (Tansu drops the connection when asked for some by name), a few hundred
        # topics per request: a federal deployment has a destination topic per Kommune.
        for start in range(0, len(names), DESCRIBE_BATCH):
            responses += await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in names[start:start + DESCRIBE_BATCH]])
    except KafkaError as exc:
        log.warning("could not read the topics' retention", extra={"error": type(exc).__name__})
        return
    actual: dict[str, str | None] = {}
    for response in responses:
        # (error_code, error_message, resource_type, resource_name, config_entries); an entry starts with
        # (config_name, config_value, …). A broker may leave out a setting it holds no value for.
        for error_code, _message, _type, name, entries in response.resources:
            if error_code == 0:
                actual[name] = next((entry[1] for entry in entries if entry[0] == RETENTION), None)
    differing = sorted(name for name, value in actual.items() if value != expected[name])
    if differing:
        named = differing[:LOGGED_TOPICS]  # one line, however many topics
        log.warning("topics keep records for another time than OZG_KAFKA_RETENTION_DAYS; the services do not change "
                    "an existing topic's configuration", extra={
                        "count": len(differing), "topics": named,
                        "retention_ms": {name: actual[name] for name in named},
                        "expected_retention_ms": settings.retention_ms})
