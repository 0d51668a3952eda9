"""Publishing routing's outbox: status changes and withdrawal copies are stored with the change they announce
(``shared.outbox``), published right after the commit, and swept by a background job when that failed."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import anyio.to_thread

from services.routing.registry import RoutingState
from services.routing.settings import Settings
from services.routing.withdrawals import WithdrawalStore
from shared import topics
from shared.kafka import publish
from shared.outbox import Backlog, OutboxEntry, OutboxStore, relay
from shared.runtime import Service

log = logging.getLogger(__name__)


class OutboxPublisher:
    """Publishes the outbox's unsent events in order and marks each sent once the broker acknowledged it."""

    def __init__(self, service: Service, state: RoutingState, settings: Settings) -> None:
        self.service = service
        self.state = state
        self.settings = settings
        self.outbox = OutboxStore(service.engine)
        self.backlog = Backlog(service.registry, service.name)
        self.withdrawals = WithdrawalStore(service.engine)
        # Service.connect() created the topics before the broker started.
        self._topics_known = True

    async def _publish(self, entry: OutboxEntry) -> None:
        if not self._topics_known:
            # A broker that lost its state (a memory-only Tansu restarted, a cluster rebuilt) comes back without
            # the topics; nothing relies on auto-creation.
            await topics.ensure_topics(self.settings.kafka, self.service.topic_specs)
            self.state.forget_topics()
            self._topics_known = True
        if entry.topic.startswith(topics.DESTINATION_PREFIX):
            # A destination's topic is created on first use; after a restart this process has not used it yet.
            destination_id = uuid.UUID(entry.topic.removeprefix(topics.DESTINATION_PREFIX))
            await self.state.ensure_topic(self.settings.kafka, destination_id)
        await publish(self.service.broker, entry.topic, entry.event())

    async def flush(self, key: str | None = None, *, before: datetime | None = None,
                    timeout_s: float | None = None) -> bool:
        """Publish the unsent events (only ``key``'s, or only those stored before ``before``), oldest first;
        True when none is left unsent. A failure or the time limit leaves the rest for the sweep."""
        entries = await anyio.to_thread.run_sync(lambda: self.outbox.unsent(key=key, before=before))
        sent = 0
        try:
            async with asyncio.timeout(timeout_s):
                sent = await relay(entries, self._publish, self.outbox.mark_sent, what="routing outbox")
        except TimeoutError:
            log.warning("routing outbox: broker too slow, left for the sweep", extra={"remaining": len(entries)})
        if sent < len(entries):
            self._topics_known = False
            return False
        return True

    async def sweep(self) -> None:
        """One round of the background job: apply kept withdrawals whose case is routed by now (after a crash
        between the routing decision and applying them), publish what is still unsent, forget what was sent."""
        now = datetime.now(UTC)
        for case_id in await anyio.to_thread.run_sync(self.withdrawals.apply_early):
            await self.flush(str(case_id))
        await self.flush(before=now - timedelta(seconds=self.settings.outbox_after_s))
        await anyio.to_thread.run_sync(
            self.outbox.purge_sent, now - timedelta(seconds=self.settings.outbox_keep_sent_s))
        self.backlog.observe(*await anyio.to_thread.run_sync(self.outbox.backlog))
