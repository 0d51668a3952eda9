"""Notify's tables and API schemas.

``contacts`` holds personal data (SPEC §3 allows it in notify); ``notifications`` and the API hold ids only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import Enum as SaEnum
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

    # Claimed and being delivered; a row left pending means the process died mid-delivery.
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


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
    # Learnt from the routed event, so later status messages can name the authority too.
    authority_name: str | None = Field(default=None, max_length=300)
    created_at: datetime = Field(default_factory=_now)


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
