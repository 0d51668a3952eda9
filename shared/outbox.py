"""The transactional outbox and its relay.

An event is stored in the same database transaction as the change it announces, so a crash or a broker outage
between the commit and the publish cannot lose it. After the commit the service publishes it at once and marks it
sent; a background sweep publishes whatever is still unsent, under the event's own id, so consumers drop a repeat.

``relay`` is the generic part (a service sweeps with ``shared.jobs.periodic``); ``OutboxEntry`` is the table for
services that keep their outgoing events as such (a service may also keep them in its own rows, as intake keeps
pending submissions).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import anyio.to_thread
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import Engine, Text, delete, func, update
from sqlmodel import JSON, Column, Field, Session, SQLModel, col, select

from shared.envelope import OutgoingEvent

log = logging.getLogger(__name__)

T = TypeVar("T")


class OutboxEntry(SQLModel, table=True):
    """An outgoing event, stored with the change it announces; ``sent_at`` is set once the broker acknowledged it."""

    __tablename__ = "outbox"

    # Publication order: a key's (case's) events must reach the topic in the order they were decided.
    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=200, unique=True)
    topic: str = Field(max_length=249)
    key: str = Field(max_length=200, index=True)
    event_type: str = Field(max_length=200)
    headers: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    value: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC), index=True)
    sent_at: datetime | None = Field(default=None, index=True)

    def event(self) -> OutgoingEvent:
        """The stored event as it is published: same id, headers and bytes every time."""
        return OutgoingEvent(key=self.key.encode(), value=self.value.encode(), headers=dict(self.headers),
                             event_id=self.event_id, event_type=self.event_type)


def stage(session: Session, topic: str, event: OutgoingEvent) -> None:
    """Add ``event`` for ``topic`` to the outbox inside ``session``'s transaction (once per event id)."""
    exists = session.exec(select(OutboxEntry.seq).where(OutboxEntry.event_id == event.event_id)).first()
    if exists is None:
        session.add(OutboxEntry(event_id=event.event_id, topic=topic, key=event.key.decode(),
                                event_type=event.event_type, headers=event.headers, value=event.value.decode()))


class OutboxStore:
    """Reading and settling a service's ``outbox`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def unsent(self, *, key: str | None = None, before: datetime | None = None, limit: int = 500,
               ) -> list[OutboxEntry]:
        """Unsent entries in publication order; only ``key``'s, or only those stored before ``before``."""
        query = select(OutboxEntry).where(col(OutboxEntry.sent_at).is_(None))
        if key is not None:
            query = query.where(OutboxEntry.key == key)
        if before is not None:
            query = query.where(col(OutboxEntry.created_at) < before)
        with Session(self.engine) as session:
            return list(session.exec(query.order_by(col(OutboxEntry.seq)).limit(limit)).all())

    def backlog(self) -> tuple[int, datetime | None]:
        """How many entries are unsent, and when the oldest of them was stored."""
        query = select(func.count(), func.min(OutboxEntry.created_at)).where(col(OutboxEntry.sent_at).is_(None))
        with Session(self.engine) as session:
            count, oldest = session.exec(query).one()
            return int(count), oldest

    def mark_sent(self, entry: OutboxEntry) -> None:
        """The broker acknowledged the entry's event."""
        with self.engine.begin() as connection:
            connection.execute(update(OutboxEntry).where(col(OutboxEntry.seq) == entry.seq,
                                                         col(OutboxEntry.sent_at).is_(None))
                               .values(sent_at=datetime.now(UTC)))

    def purge_sent(self, before: datetime) -> int:
        """Delete entries sent before ``before`` (they are on the broker); returns how many."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(OutboxEntry).where(col(OutboxEntry.sent_at) < before))
            return result.rowcount


class Backlog:
    """The outbox's backlog on /metrics. Nothing in an outbox is lost, but while the broker refuses its oldest event
    nothing behind it arrives either: a wait that only grows is what the ``OzgOutboxStuck`` alert watches."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self._unsent = Gauge("ozg_outbox_unsent", "Outgoing events stored but not yet acknowledged by the broker",
                             ["service"], registry=registry).labels(service)
        self._age = Gauge("ozg_outbox_oldest_unsent_age_seconds",
                          "How long the oldest outgoing event not yet acknowledged has waited (0: none)",
                          ["service"], registry=registry).labels(service)

    def observe(self, count: int, oldest: datetime | None) -> None:
        """Export a backlog read from the database."""
        self._unsent.set(count)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; every time stored is UTC
        self._age.set(0.0 if oldest is None else max((datetime.now(UTC) - oldest).total_seconds(), 0.0))


async def relay(items: Sequence[T], publish: Callable[[T], Awaitable[None]], settle: Callable[[T], object],
                *, what: str = "outbox") -> int:
    """Publish ``items`` in order and ``settle`` each (in a worker thread) once it was acknowledged.

    Stops at the first failure, so no later event (of the same case) overtakes the one that failed; the next
    round starts with it again. Returns how many were published and settled; never raises for a failed publish.
    """
    done = 0
    for item in items:
        try:
            await publish(item)
        except Exception as exc:  # noqa: BLE001 - the broker is away: stays unsent, the next round retries
            log.warning(f"{what}: publish failed, left for the next round",
                        extra={"error": type(exc).__name__, "remaining": len(items) - done})
            break
        await anyio.to_thread.run_sync(settle, item)
        done += 1
    return done

