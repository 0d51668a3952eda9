"""Intake's tables and API schemas (SQLModel families: ``XBase``, ``X(table=True)``, ``XPublic``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlmodel import Column, Field, SQLModel, String, Text

from shared.events import Applicant, CaseStatus, FormData, LeikaKey, Region


def _now() -> datetime:
    return datetime.now(UTC)


class CaseState(enum.StrEnum):
    """Whether the submitted event is known to be on the broker."""

    PENDING = "pending"  # reserved, publish in flight
    ACCEPTED = "accepted"  # the broker acknowledged the submitted event


class CaseBase(SQLModel):
    """Fields of a case every view shares."""

    case_id: UUID = Field(primary_key=True)
    reference: str = Field(sa_column=Column(String(32), unique=True, nullable=False))
    leika_key: str = Field(max_length=14)
    status: CaseStatus = Field(default=CaseStatus.SUBMITTED, sa_type=String(32))
    submitted_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class Case(CaseBase, table=True):
    """A case as intake keeps it: owner, idempotency key and the id of its submitted event."""

    __tablename__ = "cases"

    client_id: UUID = Field(index=True)
    idempotency_key: str = Field(max_length=200)
    body_hash: str = Field(max_length=64)
    event_id: str = Field(max_length=64)
    state: CaseState = Field(default=CaseState.PENDING, sa_type=String(16))
    # The destination routing dispatched the case to (from ozg.applications.routed): it may fetch the attachments.
    destination_id: UUID | None = Field(default=None)
    # The submitted event's data while the case is pending (the outbox); cleared once the broker acknowledged it.
    submission: str | None = Field(default=None, sa_type=Text)


@dataclass(slots=True)
class NewCase:
    """A case a submission reserves, as the group commit writes it: a plain object, because constructing the ORM's
    ``Case`` (attribute instrumentation) and reading its columns back cost a tenth of a submission's CPU."""

    case_id: UUID
    reference: str
    leika_key: str
    submitted_at: datetime
    client_id: UUID
    idempotency_key: str
    body_hash: str
    event_id: str
    submission: str | None
    state: CaseState = CaseState.PENDING

    def row(self) -> dict[str, Any]:
        """Every column of its ``cases`` row."""
        return {
            "case_id": self.case_id, "reference": self.reference, "leika_key": self.leika_key,
            "status": CaseStatus.SUBMITTED, "submitted_at": self.submitted_at, "updated_at": self.submitted_at,
            "client_id": self.client_id, "idempotency_key": self.idempotency_key, "body_hash": self.body_hash,
            "event_id": self.event_id, "state": self.state, "destination_id": None, "submission": self.submission,
        }


class CaseHistory(SQLModel, table=True):
    """One status change of a case, as the portal sees it."""

    __tablename__ = "case_history"

    id: int | None = Field(default=None, primary_key=True)
    case_id: UUID = Field(index=True, foreign_key="cases.case_id")
    status: CaseStatus = Field(sa_type=String(32))
    at: datetime
    detail: str | None = Field(default=None, max_length=5000)


class Attachment(SQLModel, table=True):
    """An uploaded file: the blob itself is in the blob store; ``case_id`` once an application references it."""

    __tablename__ = "attachments"

    attachment_id: UUID = Field(primary_key=True)
    client_id: UUID = Field(index=True)
    filename: str = Field(max_length=255)
    media_type: str = Field(max_length=64)
    size: int
    sha512: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=_now, index=True)
    case_id: UUID | None = Field(default=None, index=True, foreign_key="cases.case_id")


class AttachmentPublic(BaseModel):
    """The answer of ``POST /v1/attachments``."""

    id: UUID
    filename: str
    size: int
    media_type: str
    sha512: str


class ApplicationCreate(BaseModel):
    """The body of ``POST /v1/applications``."""

    model_config = ConfigDict(extra="forbid")

    leika_key: LeikaKey
    region: Region
    applicant: Applicant
    form: FormData
    attachments: list[UUID] = PydanticField(default_factory=list, max_length=50)


class ApplicationAccepted(BaseModel):
    """The answer of ``POST /v1/applications``."""

    case_id: UUID
    reference: str
    status: CaseStatus
    links: dict[str, str]


class HistoryEntry(BaseModel):
    """One entry of a case's history."""

    status: CaseStatus
    at: datetime
    detail: str | None = None


class CasePublic(BaseModel):
    """A case as its portal sees it."""

    case_id: UUID
    reference: str
    leika_key: str
    status: CaseStatus
    submitted_at: datetime
    updated_at: datetime
    history: list[HistoryEntry]
