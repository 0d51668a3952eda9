"""Intake's part of SPEC §7: a case's attachments and the messages to the applicant in its history are deleted
``INTAKE_RETENTION_DAYS`` after the case ended, and each deletion is published for the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter

from services.intake.blobs import BlobStore
from services.intake.store import IntakeStore
from shared.jobs import periodic
from shared.kafka import EventBroker
from shared.retention import DeletionPublisher, drain

SERVICE = "intake"
# Cases looked up at a time; a round goes on until none is left (shared.retention.drain).
BATCH = 100


class Retention:
    """Deletes what the retention period ran out for, and publishes each deletion."""

    def __init__(self, store: IntakeStore, blobs: BlobStore, broker: EventBroker, retention_days: float,
                 registry: CollectorRegistry) -> None:
        self.store = store
        self.blobs = blobs
        self.retention = timedelta(days=retention_days)
        self.publisher = DeletionPublisher(store.engine, broker, SERVICE)
        self.deleted = Counter("ozg_intake_personal_data_deleted",
                               "Cases whose attachments and messages were deleted after the retention period",
                               registry=registry)

    async def purge(self) -> int:
        """Delete the personal data of every case whose retention period ran out, then publish every deletion not
        yet published (this round's and any an earlier round left); returns how many were published."""
        now = datetime.now(UTC)

        async def erase(case_id: UUID) -> None:
            # The files first: should this stop half-way, the next round finds the case again and deletes the rest
            # (deleting a blob that is gone is no error), and only then the records.
            for attachment_id in await anyio.to_thread.run_sync(self.store.case_attachments, case_id):
                await self.blobs.delete(attachment_id)
            await anyio.to_thread.run_sync(self.store.erase, case_id, now)

        await drain(lambda: anyio.to_thread.run_sync(self.store.expired_cases, now - self.retention, BATCH), erase)
        published = await self.publisher.publish_pending()
        self.deleted.inc(published)
        return published

    def job(self, interval_s: float) -> Callable[[], Awaitable[None]]:
        """A background job: purge at start-up and every ``interval_s`` seconds."""
        return periodic("retention round", interval_s, self.purge)
