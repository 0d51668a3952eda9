"""The idempotent consumer: each processed event id is recorded in the same transaction as its effect.

Modelled on the ``eventsourcing`` library's tracking records: if the transaction commits, both the effect and the
record exist; if it rolls back, neither does. A redelivered event finds its record and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, Session, SQLModel


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
