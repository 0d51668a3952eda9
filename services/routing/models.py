"""Routing's tables and API schemas (SQLModel families: ``XBase``, ``X(table=True)``, ``XPublic``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, HttpUrl, ValidationInfo, field_validator
from pydantic import Field as PydField
from sqlmodel import JSON, Column, Field, SQLModel, String

from services.routing.lifecycle import NEEDS_MESSAGE, NEEDS_OUTCOME, NEEDS_PROBLEMS
from shared.events import (
    Authority,
    CaseStatus,
    LeikaKey,
    Line,
    Lines,
    Outcome,
    Problem,
    Region,
    ResolvedRegion,
    UnroutableReason,
)


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
    # Optional HTTPS webhook channel (delivery comes with the webhook issue); the secret is never answered.
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_secret: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    @property
    def channels(self) -> list[str]:
        """The delivery channels: its Kafka topic always, the webhook when one is registered."""
        return ["kafka", "webhook"] if self.webhook_url else ["kafka"]


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


@dataclasses.dataclass(frozen=True, slots=True)
class CaseRecord:
    """A ``routed_cases`` row as the dispatcher decides it: a plain value, not an ORM object.

    Constructing a ``RoutedCase`` (SQLAlchemy instrumentation, pydantic default factories) cost more CPU per case
    than deciding it; the dispatcher writes these with SQLAlchemy Core (``RoutingStore.record_many``).
    """

    case_id: UUID
    reference: str
    leika_key: str
    status: CaseStatus
    destination_id: UUID | None = None
    authority_ars: str | None = None
    rule: str | None = None
    reason: UnroutableReason | None = None
    # When it was decided, as RoutedCase's own default.
    updated_at: datetime = dataclasses.field(default_factory=_now)

    def row(self) -> dict[str, Any]:
        """The column values."""
        return {"case_id": self.case_id, "reference": self.reference, "leika_key": self.leika_key,
                "status": self.status, "destination_id": self.destination_id,
                "authority_ars": self.authority_ars, "rule": self.rule, "reason": self.reason,
                "updated_at": self.updated_at}

    def routed_case(self) -> RoutedCase:
        """The same row as an ORM object."""
        return RoutedCase(**self.row())


class RouteAnswer(BaseModel):
    """The answer of ``GET /v1/routes`` (SPEC §5 routing)."""

    leika_key: str
    region: ResolvedRegion
    authority: Authority
    rule: str
    destinations: list[DestinationPublic]


class DataVersion(SQLModel, table=True):
    """One row per kind of shared data (``directory``, ``postcodes``, ``destinations``).

    ``version`` goes up with every change; every routing replica polls these rows and reloads what changed.
    """

    __tablename__ = "data_versions"

    kind: str = Field(primary_key=True, max_length=32)
    version: int = 0
    # Gebietsstand (YYYYMMDD) of an imported file; the sha256 and name of that file.
    stand: str | None = Field(default=None, max_length=8)
    sha256: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=300)
    records: int = 0
    updated_at: datetime = Field(default_factory=_now)


class DirLand(SQLModel, table=True):
    """A Land of the imported GV100AD (Satzart 10)."""

    __tablename__ = "dir_laender"

    key: str = Field(primary_key=True, max_length=2)
    name: str = Field(max_length=100)
    seat: str = Field(max_length=100)


class DirRegierungsbezirk(SQLModel, table=True):
    """A Regierungsbezirk (Satzart 20); ``active`` is false for statistical or abolished ones."""

    __tablename__ = "dir_regierungsbezirke"

    key: str = Field(primary_key=True, max_length=3)
    name: str = Field(max_length=100)
    seat: str = Field(max_length=100)
    active: bool


class DirRegion(SQLModel, table=True):
    """A Region of Baden-Württemberg (Satzart 30)."""

    __tablename__ = "dir_regionen"

    key: str = Field(primary_key=True, max_length=4)
    name: str = Field(max_length=100)
    seat: str = Field(max_length=100)


class DirKreis(SQLModel, table=True):
    """A Kreis (Satzart 40)."""

    __tablename__ = "dir_kreise"

    key: str = Field(primary_key=True, max_length=5)
    name: str = Field(max_length=100)
    seat: str = Field(max_length=100)
    type_code: str = Field(max_length=2)
    type: str = Field(max_length=60)
    kreisfrei: bool


class DirVerband(SQLModel, table=True):
    """A Gemeindeverband (Satzart 50)."""

    __tablename__ = "dir_verbaende"

    ars: str = Field(primary_key=True, max_length=9)
    name: str = Field(max_length=100)
    seat: str = Field(max_length=100)
    type_code: str = Field(max_length=2)
    type: str = Field(max_length=60)


class DirGemeinde(SQLModel, table=True):
    """A Gemeinde or gemeindefreies Gebiet (Satzart 60)."""

    __tablename__ = "dir_gemeinden"

    ars: str = Field(primary_key=True, max_length=12)
    ags: str = Field(max_length=8, unique=True)
    name: str = Field(max_length=100)
    type_code: str = Field(max_length=2)
    type: str = Field(max_length=60)
    area_ha: int | None = None
    population: int | None = None
    postal_code: str | None = Field(default=None, max_length=5)
    postal_code_unique: bool


class DirPostcode(SQLModel, table=True):
    """One row of the PLZ table: a postal code, a Gemeinde (AGS) and a place name."""

    __tablename__ = "dir_postcodes"

    id: int | None = Field(default=None, primary_key=True)
    postal_code: str = Field(max_length=5, index=True)
    ags: str = Field(max_length=8)
    place: str = Field(max_length=200)
    osm_id: str | None = Field(default=None, max_length=30)


class ClearingCase(SQLModel, table=True):
    """An unroutable case waiting for an operator, with the application (personal data, routing's own use).

    The row, and with it the personal data, is deleted when the case is routed by hand.
    """

    __tablename__ = "clearing_cases"

    case_id: UUID = Field(primary_key=True)
    reference: str = Field(max_length=32)
    leika_key: str = Field(max_length=14)
    reason: UnroutableReason = Field(sa_type=String(32))
    detail: str = Field(max_length=500)
    cause_event_id: str = Field(max_length=200)
    application: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=_now)


class WebhookIn(BaseModel):
    """An HTTPS webhook channel; the secret signs deliveries (HMAC-SHA512) and is never answered back."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    # Omit it to keep the stored secret (the API never answers it, so a client cannot send it back).
    secret: Line | None = PydField(default=None, min_length=16, max_length=500)

    # https, checked by the route: ROUTING_WEBHOOK_ALLOW_HTTP_LOOPBACK admits http to a loopback address.


class DestinationIn(BaseModel):
    """The body of ``PUT /v1/destinations/{destination_id}``: the whole registration (replaces the old one)."""

    model_config = ConfigDict(extra="forbid")

    name: Line = PydField(min_length=1, max_length=200)
    authority_ars: str = PydField(pattern=r"^(\d{2}|\d{5}|\d{9}|\d{12})$",
                                  description="ARS of the authority served: 2, 5, 9 or 12 digits")
    leika_keys: list[LeikaKey] = PydField(default_factory=list, description="services served; empty: all")
    webhook: WebhookIn | None = None


class KafkaChannel(BaseModel):
    """The destination's own Kafka topic (always there)."""

    topic: str


class WebhookOut(BaseModel):
    """A registered webhook (without its secret)."""

    url: str


class DestinationChannels(BaseModel):
    """How a destination receives its cases."""

    kafka: KafkaChannel
    webhook: WebhookOut | None = None


class DestinationOut(BaseModel):
    """A registered destination as the operator API answers it (never with the webhook secret)."""

    destination_id: UUID
    name: str
    authority_ars: str
    leika_keys: list[str]
    channels: DestinationChannels
    created_at: datetime
    updated_at: datetime


class ClearingEntry(BaseModel):
    """A case waiting in clearing: no personal data."""

    case_id: UUID
    reference: str
    leika_key: str
    reason: UnroutableReason
    detail: str
    waiting_since: datetime


class FailedWebhookDelivery(BaseModel):
    """A webhook delivery routing gave up on, flagged for an operator, or one put back on the schedule by
    ``POST /v1/clearing/webhooks/{delivery_id}/redeliver`` (no personal data)."""

    delivery_id: UUID
    case_id: UUID
    destination_id: UUID
    event_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_error: str | None
    failed_at: datetime | None
    redeliverable: bool = PydField(description="whether it can be redelivered now: failed, and its event still kept")
    redeliverable_until: datetime | None = PydField(
        description="when its event is deleted (ROUTING_WEBHOOK_FAILED_KEEP_DAYS after it first failed) and it can "
                    "no longer be redelivered; null once deleted")


class ClearingList(BaseModel):
    """``GET /v1/clearing``."""

    cases: list[ClearingEntry]


class ManualRouting(BaseModel):
    """The body of ``POST /v1/clearing/{case_id}``: where the case goes.

    ``region`` names the Gemeinde when the application's own place did not resolve (unknown or ambiguous).
    """

    model_config = ConfigDict(extra="forbid")

    destination_id: UUID
    region: Region | None = None


class ManualRoutingDone(BaseModel):
    """The answer of ``POST /v1/clearing/{case_id}``."""

    case_id: UUID
    status: CaseStatus
    destination_id: UUID
    authority: Authority
    rule: str


ReportedStatus = Literal["received", "rejected", "in_progress", "information_requested", "decided", "closed"]


class ProblemIn(Problem):
    """A problem as a back office reports it: bounded, so that a report of up to 100 stays an event every consumer
    takes (``max_event_bytes``). The event's own ``Problem`` stays as lenient as events already published."""

    type: Annotated[Line, PydField(min_length=1, max_length=500)] = "about:blank"
    title: Annotated[Line, PydField(min_length=1, max_length=200)]
    detail: Annotated[Lines, PydField(max_length=2000)] | None = None
    instance: Annotated[Line, PydField(max_length=500)] | None = None


class StatusReport(BaseModel):
    """The body of ``POST /v1/cases/{case_id}/status``: what the back office reports (SPEC §4).

    ``information_requested`` and ``decided`` carry a message to the applicant, ``decided`` its outcome,
    ``rejected`` the problems found (RFC 9457 style).
    """

    model_config = ConfigDict(extra="forbid")

    status: ReportedStatus
    # validate_default: a missing field is checked against the status too, and the error points at it.
    message: Lines | None = PydField(default=None, min_length=1, max_length=5000, validate_default=True,
                                   description="To the applicant; required for information_requested and decided")
    outcome: Outcome | None = PydField(default=None, validate_default=True,
                                       description="Required for decided, refused otherwise")
    problems: list[ProblemIn] = PydField(default_factory=list, max_length=100, validate_default=True,
                                       description="Why the case is rejected; required for rejected")

    @field_validator("message", "outcome", "problems")
    @classmethod
    def _goes_with_status(cls, value: Any, info: ValidationInfo) -> Any:
        if "status" not in info.data:  # the status itself is invalid, and its error says so
            return value
        status = CaseStatus(info.data["status"])
        field = str(info.field_name)
        needed_by = {"message": NEEDS_MESSAGE, "outcome": NEEDS_OUTCOME, "problems": NEEDS_PROBLEMS}[field]
        if status in needed_by and not value:
            raise ValueError(f"status {status.value} needs {field}")
        # A message may go with any status; an outcome or problems only with the status they belong to.
        if status not in needed_by and value and field != "message":
            what = "an outcome goes" if field == "outcome" else "problems go"
            raise ValueError(f"{what} only with status {' or '.join(sorted(s.value for s in needed_by))}")
        return value


class StatusAccepted(BaseModel):
    """The answer of ``POST /v1/cases/{case_id}/status``: the change is stored, its event with it (outbox)."""

    case_id: UUID
    status: CaseStatus
    previous_status: CaseStatus
    event_id: str
    changed_at: datetime
    published: bool = PydField(description="true: the broker acknowledged the event before this answer; false: it "
                                           "was not reachable in time and routing publishes the event later, "
                                           "under this event_id")


class DestinationCase(BaseModel):
    """A case of a destination as the pull API lists it: metadata only (the case itself is on its topic)."""

    case_id: UUID
    reference: str
    leika_key: str
    status: CaseStatus
    updated_at: datetime


class DestinationCaseList(BaseModel):
    """``GET /v1/destinations/{destination_id}/cases``: one page, oldest change first."""

    cases: list[DestinationCase]
    cursor: str | None = PydField(description="opaque position after this page: pass it as `cursor` to go on, "
                                              "or keep it to poll for cases added or changed later; an empty "
                                              "page answers the cursor it was given")
    next: str | None = PydField(description="the next page (same filters and limit), relative to the API's base; "
                                            "null on the last page")


class EarlyWithdrawal(SQLModel, table=True):
    """A withdrawal that reached routing before the case did; applied as soon as the case is routed.

    No personal data: the status-changed event's data (ids, reference, statuses).
    """

    __tablename__ = "early_withdrawals"

    case_id: UUID = Field(primary_key=True)
    event_id: str = Field(max_length=200)
    change: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=_now)


class WebhookDelivery(SQLModel, table=True):
    """One event to push to a destination's webhook, with its persisted retry schedule.

    ``body`` holds the dispatched event (personal data) until the delivery is delivered; a failed one keeps it for a
    redelivery until ``webhook_failed_keep_days`` after ``first_failed_at``, then the retention job clears it.
    """

    __tablename__ = "webhook_deliveries"

    delivery_id: UUID = Field(primary_key=True)
    event_id: str = Field(max_length=200)
    destination_id: UUID = Field(index=True)
    case_id: UUID = Field(index=True)
    headers: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    body: str
    status: str = Field(default="pending", max_length=16, index=True)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=_now, index=True)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=_now)
    settled_at: datetime | None = None
    # When it failed the first time: the keep period runs from here, however often it is redelivered.
    first_failed_at: datetime | None = None
    # When an operator last put it back on the schedule: its 24-h window runs from here instead of created_at.
    redelivered_at: datetime | None = None

    @property
    def window_start(self) -> datetime:
        """Where the delivery's retry window (``webhook_max_age_s``) begins."""
        return self.redelivered_at or self.created_at


class WebhookAttempt(SQLModel, table=True):
    """One HTTP attempt of a webhook delivery: when, and what came back."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: UUID = Field(index=True)
    attempt: int
    attempted_at: datetime = Field(default_factory=_now)
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    outcome: str = Field(max_length=16)  # delivered | retry | failed
