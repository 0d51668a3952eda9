"""The idempotent consumer: each processed event id is recorded in the same transaction as its effect.

Modelled on the ``eventsourcing`` library's tracking records: if the transaction commits, both the effect and the
record exist; if it rolls back, neither does. A redelivered event finds its record and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlmodel import Field, Session, SQLModel, col, select


class ProcessedEvent(SQLModel, table=True):
    """One row per (consumer, event id) that has taken effect."""

    __tablename__ = "processed_events"

    consumer: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(primary_key=True, max_length=200)
    processed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


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


def first_deliveries(session: Session, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Claim a batch of event ids at once, as first_delivery() claims one: returns those not processed before.

    One query and one batched insert instead of a lookup and a flush per event (a batch consumer's hot path).
    """
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    seen = set(session.exec(select(ProcessedEvent.event_id).where(
        ProcessedEvent.consumer == consumer, col(ProcessedEvent.event_id).in_(ids))))
    fresh = [event_id for event_id in ids if event_id not in seen]
    session.add_all([ProcessedEvent(consumer=consumer, event_id=event_id) for event_id in fresh])
    session.flush()
    return set(fresh)
