"""The idempotent consumer: each processed event id is recorded in the same transaction as its effect.

Modelled on the ``eventsourcing`` library's tracking records: if the transaction commits, both the effect and the
record exist; if it rolls back, neither does. A redelivered event finds its record and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select
from sqlmodel import Field, Session, SQLModel

from shared.db import table_of


class ProcessedEvent(SQLModel, table=True):
    """One row per (consumer, event id) that has taken effect."""

    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(primary_key=True, max_length=200)
    processed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


# The table, for SQLAlchemy Core statements.
_TABLE = table_of(ProcessedEvent)


def first_delivery(session: Session, consumer: str, event_id: str) -> bool:
    """Claim ``event_id`` for ``consumer`` inside ``session``'s transaction.

    Returns False when it was processed before: the caller then does nothing. Two concurrent deliveries both
    pass the check, but the primary key lets only one of them commit.
    """
    if session.get(ProcessedEvent, (consumer, event_id)) is not None:
        return False
    session.add(ProcessedEvent(consumer=consumer, event_id=event_id))
    session.flush()
    return True


def processed_among(connection: Connection, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Which of ``event_ids`` ``consumer`` has processed before (one query)."""
    ids = list(set(event_ids))
    if not ids:
        return set()
    return set(connection.scalars(select(_TABLE.c.event_id).where(
        _TABLE.c.consumer == consumer, _TABLE.c.event_id.in_(ids))))


def claim_batch(connection: Connection, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Claim a batch of event ids inside ``connection``'s transaction, as first_delivery() claims one: returns
    those not processed before.

    SQLAlchemy Core, one query and one executemany insert: building and flushing an ORM object per event cost a
    batch consumer more than its own work.
    """
    ids = set(event_ids)
    fresh = ids - processed_among(connection, consumer, ids)
    if fresh:
        now = datetime.now(UTC)
        # In key order: concurrent claims of overlapping batches then wait for each other instead of deadlocking.
        connection.execute(insert(_TABLE), [{"consumer": consumer, "event_id": event_id, "processed_at": now}
                                            for event_id in sorted(fresh)])
    return fresh
