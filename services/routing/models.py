"""Routing's tables and API schemas (SQLModel families: ``XBase``, ``X(table=True)``, ``XPublic``)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from pydantic import BaseModel
from sqlmodel import JSON, Column, Field, SQLModel, String

from shared.events import Authority, CaseStatus, ResolvedRegion, UnroutableReason


def _now() -> datetime:
    return datetime.now(UTC)


class DestinationBase(SQLModel):
    """What an operator registers about a back office."""

    name: str = Field(max_length=200)
    authority_ars: str = Field(max_length=12, index=True)
    # Empty: the destination serves every service of its authority.
    leika_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Destination(DestinationBase, table=True):
    """A registered back office (destination)."""

    __tablename__ = "destinations"

    destination_id: UUID = Field(primary_key=True)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)


class DestinationPublic(BaseModel):
    """A destination as routing answers it."""

    destination_id: UUID
    name: str
    channels: list[str]


class RoutedCase(SQLModel, table=True):
    """What routing decided for a case (no personal data)."""

    __tablename__ = "routed_cases"

    case_id: UUID = Field(primary_key=True)
    reference: str = Field(max_length=32)
    leika_key: str = Field(max_length=14)
    status: CaseStatus = Field(sa_type=String(32))
    destination_id: UUID | None = Field(default=None, index=True)
    authority_ars: str | None = Field(default=None, max_length=12)
    rule: str | None = Field(default=None, max_length=100)
    reason: UnroutableReason | None = Field(default=None, sa_type=String(32))
    updated_at: datetime = Field(default_factory=_now)


class RouteAnswer(BaseModel):
    """The answer of ``GET /v1/routes`` (SPEC §5 routing)."""

    leika_key: str
    region: ResolvedRegion
    authority: Authority
    rule: str
    destinations: list[DestinationPublic]
