"""Deleting personal data after its retention period (SPEC §7), and the record that makes each deletion audited.

A service writes a ``Deletion`` in the same transaction as the delete and publishes it from there (an outbox):
``de.ozg.personal-data.deleted.v1`` on ``ozg.privacy.deletions``, which audit puts in the trail. A crash between the
delete and the publish loses nothing.
"""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import anyio.to_thread
from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from shared import events, topics
from shared.envelope import build_event, derived_event_id
from shared.events import PersonalDataDeleted
from shared.kafka import EventBroker, publish

log = logging.getLogger(__name__)

T = TypeVar("T")


async def drain(fetch: Callable[[], Awaitable[Sequence[T]]], handle: Callable[[T], Awaitable[object]],
                key: Callable[[T], Hashable] = lambda item: item) -> int:
    """Handle what ``fetch`` finds, a page at a time, until a page brings nothing this round has handled not yet;
    returns how many were handled.

    Each page holds what is still to do (what was handled leaves it), so a round goes on until none is left, however
    many there are; one that stays (it could not be done) ends the round instead of being handled for ever.
    """
    handled: set[Hashable] = set()
    while fresh := [item for item in await fetch() if key(item) not in handled]:
        for item in fresh:
            await handle(item)
            handled.add(key(item))
    return len(handled)


class Deletion(SQLModel, table=True):
    """A case whose personal data a service deleted after the retention period, and whether that was published.

    No personal data: the case id, the categories deleted and when.
    """

    __tablename__ = "deletions"

    case_id: UUID = Field(primary_key=True)
    categories: str = Field(max_length=200)
    deleted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    published_at: datetime | None = None


def record_deletion(session: Session, case_id: UUID, categories: Sequence[str], now: datetime) -> None:
    """Record, inside ``session``'s transaction, that ``categories`` of the case's personal data were deleted.

    A case has one row: a later deletion of the same case (what came later still, deleted in turn) replaces it,
    with the categories of both, to be published anew.
    """
    names = list(categories)
    earlier = session.get(Deletion, case_id)
    if earlier is not None:
        session.delete(earlier)
        session.flush()
        names += [c for c in earlier.categories.split(",") if c and c not in names]
    session.add(Deletion(case_id=case_id, categories=",".join(names), deleted_at=now))


def was_deleted(session: Session, case_id: UUID) -> bool:
    """Whether the service deleted personal data of the case after its retention."""
    return session.get(Deletion, case_id) is not None


class DeletionPublisher:
    """Publishes the recorded deletions that are not on ``ozg.privacy.deletions`` yet."""

    def __init__(self, engine: Engine, broker: EventBroker, service: str) -> None:
        self.engine = engine
        self.broker = broker
        self.service = service

    def _unpublished(self, limit: int) -> list[Deletion]:
        with Session(self.engine) as session:
            return list(session.exec(select(Deletion).where(col(Deletion.published_at).is_(None)).limit(limit)))

    def _mark_published(self, deletion: Deletion) -> None:
        with Session(self.engine) as session:
            row = session.get(Deletion, deletion.case_id)
            # Unless a later deletion replaced it meanwhile: that one is still to be published.
            if row is not None and row.deleted_at == deletion.deleted_at:
                row.published_at = datetime.now(UTC)
                session.add(row)
                session.commit()

    async def publish_pending(self, page: int = 100) -> int:
        """Publish every recorded deletion not yet published (``page`` at a time), each marked as published once
        acknowledged; returns how many."""
        return await drain(lambda: anyio.to_thread.run_sync(self._unpublished, page), self._publish,
                           key=lambda deletion: (deletion.case_id, deletion.deleted_at))

    async def _publish(self, deletion: Deletion) -> None:
        data = PersonalDataDeleted(
            case_id=deletion.case_id, service=self.service,
            categories=[c for c in deletion.categories.split(",") if c],
            deleted_at=deletion.deleted_at, reason="retention",
        )
        event = build_event(
            event_type=events.PERSONAL_DATA_DELETED_V1, source=f"/ozg/{self.service}",
            subject=str(deletion.case_id),
            # One id per deletion, the same however often it is published: audit keeps it once.
            event_id=derived_event_id(str(deletion.case_id), events.PERSONAL_DATA_DELETED_V1,
                                      f"{self.service}|{deletion.deleted_at.isoformat()}"),
            data=data,
        )
        await publish(self.broker, topics.DELETIONS, event)
        await anyio.to_thread.run_sync(self._mark_published, deletion)
        log.info("personal data deleted after retention", extra={"case_id": str(deletion.case_id)})


def remove_stale_files(paths: Iterable[Path], older_than_s: float, *, keep: Collection[Path] = ()) -> int:
    """Delete the regular files among ``paths`` (a glob of temporary files) that nothing wrote to for
    ``older_than_s``, except those in ``keep``; returns how many.

    A crash leaves such files behind, and they may hold personal data. Judged by the last write, not the start: a
    file still being written is younger than any sensible ``older_than_s``.
    """
    cutoff = time.time() - older_than_s
    removed = 0
    for path in paths:
        if path in keep:
            continue
        try:
            status = path.lstat()
            if not stat.S_ISREG(status.st_mode) or status.st_mtime >= cutoff:
                continue
            path.unlink()
        except FileNotFoundError:  # finished (renamed into place) or removed meanwhile
            continue
        removed += 1
    return removed
