"""Notify's tables and API schemas.

``contacts`` holds personal data (SPEC §3 allows it in notify); ``notifications`` and the API hold ids only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Enum as SaEnum
from sqlalchemy import Text
from sqlmodel import Field, SQLModel, UniqueConstraint

from shared.events import ReplyChannel


def _now() -> datetime:
    return datetime.now(UTC)


def _enum_column(enum_type: type[enum.StrEnum], length: int) -> SaEnum:
    """A VARCHAR holding an enum's values that loads back as enum members.

    ``sa_type=String`` would load plain strings, and ``status is NotificationStatus.SENT`` would then be False.
    """
    return SaEnum(
        enum_type, native_enum=False, length=length, validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


class NotificationStatus(enum.StrEnum):
    """Where a notification stands."""

    # Waiting for its (next) attempt at ``next_attempt_at``: the persisted retry schedule.
    PENDING = "pending"
    # An attempt is under way until ``next_attempt_at`` (the lease); one left past its lease was interrupted.
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


FINAL_STATUSES = frozenset({NotificationStatus.SENT, NotificationStatus.FAILED})


class Contact(SQLModel, table=True):
    """How to reach the applicant of a case, taken from its submitted event."""

    __tablename__ = "contacts"

    case_id: UUID = Field(primary_key=True)
    reference: str = Field(max_length=32)
    leika_key: str = Field(max_length=14)
    language: str = Field(max_length=2)
    reply_channel: ReplyChannel = Field(sa_type=_enum_column(ReplyChannel, 16))
    name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=320)
    postfach_id: str | None = Field(default=None, max_length=200)
    # The postal address, for letters.
    street: str | None = Field(default=None, max_length=100)
    postal_code: str | None = Field(default=None, max_length=10)
    city: str | None = Field(default=None, max_length=100)
    country: str | None = Field(default=None, max_length=2)
    # Learnt from the routed event, so later status messages can name the authority too.
    authority_name: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(default_factory=_now)
    # When the case ended (closed, withdrawn, rejected): the retention period of SPEC §7 runs from here.
    ended_at: datetime | None = Field(default=None, index=True)

    def categories(self) -> list[str]:
        """The categories of personal data this row holds, as named in deletion events."""
        held = {
            "name": bool(self.name),
            "email": self.email is not None,
            "postfach_id": self.postfach_id is not None,
            "postal_address": self.street is not None,
        }
        return [category for category, present in held.items() if present]


class Notification(SQLModel, table=True):
    """One message to an applicant, caused by one event on one channel."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("trigger_event_id", "channel", name="uq_notifications_trigger_channel"),)

    notification_id: UUID = Field(primary_key=True)
    case_id: UUID = Field(index=True)
    channel: ReplyChannel = Field(sa_type=_enum_column(ReplyChannel, 16))
    trigger_event_id: str = Field(max_length=200)
    trigger_type: str = Field(max_length=100)
    status: NotificationStatus = Field(
        default=NotificationStatus.PENDING, sa_type=_enum_column(NotificationStatus, 16)
    )
    attempts: int = 0
    error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=_now)
    sent_at: datetime | None = None
    # PENDING: when the next attempt is due; SENDING: until when the running attempt holds the row.
    next_attempt_at: datetime | None = Field(default=None, index=True)
    last_attempt_at: datetime | None = None
    # Set once the final outcome is on ozg.notifications; a final row without it is published again.
    outcome_published_at: datetime | None = None
    # The rendered message, kept only while it may still be sent (it names the applicant); cleared when final.
    subject: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, sa_type=Text)
    language: str | None = Field(default=None, max_length=2)


class ParkedEvent(SQLModel, table=True):
    """An event that arrived before the submitted event of its case (different topics, so no order between
    them): kept until the contact is known, then handled in arrival order. ``data`` may hold a message to the
    applicant: deleted with the contact, or after the retention period if the contact never comes."""

    __tablename__ = "parked_events"

    event_id: str = Field(primary_key=True, max_length=200)
    case_id: UUID = Field(index=True)
    event_type: str = Field(max_length=100)
    source: str = Field(max_length=200)
    event_time: datetime
    data: str = Field(sa_type=Text)
    parked_at: datetime = Field(default_factory=_now)


class NotificationPublic(BaseModel):
    """A notification as an operator sees it: what was sent when, on which channel; no contact data."""

    notification_id: UUID
    case_id: UUID
    channel: ReplyChannel
    trigger_event_id: str
    trigger_type: str
    status: NotificationStatus
    attempts: int
    error: str | None = None
    created_at: datetime
    sent_at: datetime | None = None
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
