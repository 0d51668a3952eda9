"""Topic names of SPEC §3 and their idempotent creation at start-up."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

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


async def ensure_topics(settings: KafkaSettings, specs: Iterable[TopicSpec]) -> None:
    """Create the topics that don't exist yet; existing ones are left as they are.

    Nothing relies on broker auto-creation: Apache Kafka in production has it turned off.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=settings.request_timeout_ms,
        **settings.client_options(),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return
        new = [
            NewTopic(
                name=spec.name,
                num_partitions=spec.partitions or settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs={**({"cleanup.policy": "compact"} if spec.compacted else {}), **spec.config},
            )
            for spec in missing
        ]
        # Another replica may win the race; the topic is there, which is all we need.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
        log.info("created topics", extra={"topics": [spec.name for spec in missing]})
    finally:
        await admin.close()
