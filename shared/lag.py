"""Consumer lag per topic and partition: how far each of a service's consumer groups is behind the end of its
topics."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Gauge

from shared.settings import KafkaSettings
from shared.topics import AUDITED_PATTERN

log = logging.getLogger(__name__)


class ConsumerLag:
    """Measures the lag of a service's consumer groups, exported as ``ozg_consumer_lag{group, topic, partition}``.

    ``groups`` is asked at every measurement: a service's subscribers (and so its groups) are registered after
    the service object is made.
    """

    def __init__(self, settings: KafkaSettings, groups: Callable[[], Iterable[str]],
                 registry: CollectorRegistry) -> None:
        self.settings = settings
        self.groups = groups
        self.gauge = Gauge("ozg_consumer_lag", "Records the consumer group has not yet committed",
                           ["group", "topic", "partition"], registry=registry)

    async def measure(self) -> dict[tuple[str, TopicPartition], int]:
        """Every group's lag on every partition of the ``ozg.*`` topics it has committed offsets for."""
        return {(group, tp): lag for group in self.groups() for tp, lag in (await self._measure(group)).items()}

    async def _measure(self, group_id: str) -> dict[TopicPartition, int]:
        # A group member that never subscribes reads the group's committed offsets without joining it.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.bootstrap_servers, group_id=group_id,
                                    enable_auto_commit=False, request_timeout_ms=self.settings.request_timeout_ms,
                                    **self.settings.client_options())
        try:
            # Inside the try: a start that fails (broker away) must still close what it opened.
            await consumer.start()
            pattern = re.compile(AUDITED_PATTERN)
            partitions = [
                TopicPartition(topic, partition)
                for topic in sorted(await consumer.topics()) if pattern.match(topic)
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            committed = {tp: await consumer.committed(tp) for tp in partitions}
            known = [tp for tp, offset in committed.items() if offset is not None]
            if not known:
                return {}
            end = await consumer.end_offsets(known)
        finally:
            await consumer.stop()
        lag = {tp: max(end[tp] - (committed[tp] or 0), 0) for tp in known}
        for tp, value in lag.items():
            self.gauge.labels(group_id, tp.topic, str(tp.partition)).set(value)
        return lag

