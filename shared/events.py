"""Pydantic models of the data of every event type of SPEC §3, and their CloudEvents ``type`` strings.

Event types are versioned: a breaking change gets a new ``.v2`` type beside the old one.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, model_validator

SUBMITTED_V1 = "de.ozg.application.submitted.v1"
ROUTED_V1 = "de.ozg.application.routed.v1"
UNROUTABLE_V1 = "de.ozg.application.unroutable.v1"
DISPATCHED_V1 = "de.ozg.application.dispatched.v1"
STATUS_CHANGED_V1 = "de.ozg.case.status-changed.v1"
NOTIFICATION_SENT_V1 = "de.ozg.notification.sent.v1"
NOTIFICATION_FAILED_V1 = "de.ozg.notification.failed.v1"
CLIENT_REGISTERED_V1 = "de.ozg.client.registered.v1"
CLIENT_REVOKED_V1 = "de.ozg.client.revoked.v1"
PERSONAL_DATA_DELETED_V1 = "de.ozg.personal-data.deleted.v1"

LeikaKey = Annotated[str, Field(pattern=r"^99\d{12}$", examples=["99107023037000"])]
Ags = Annotated[str, Field(pattern=r"^\d{8}$", examples=["09273137"])]
Ars = Annotated[str, Field(pattern=r"^\d{12}$", examples=["092730137137"])]
PostalCode = Annotated[str, Field(pattern=r"^\d{5}$", examples=["93309"])]
# Text people write: a name or a title is one line without control characters, a message may break lines. A NUL
# would stop at PostgreSQL (its text takes none) in whichever service stores the field, another control character
# in a mail header or a letter.
Line = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]*$")]
Lines = Annotated[str, Field(pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")]
# A case's reference, as intake makes it (``OZG-2026-8F3K-2QXD``); the services' tables hold 32 characters.
Reference = Annotated[Line, Field(min_length=1, max_length=32)]


def utc_representable(moment: datetime) -> bool:
    """Whether ``moment`` has a UTC equivalent. 0001-01-01T00:00+01:00 is valid ISO 8601 but lies before the first
    UTC time Python has: comparing, storing or canonicalising it would raise OverflowError later, in whichever
    consumer meets it (an error, not an answer)."""
    try:
        moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return False
    return True


def _in_utc_range(moment: datetime) -> datetime:
    if not utc_representable(moment):
        raise ValueError("the time lies outside the range of UTC times")
    return moment


Instant = Annotated[datetime, AfterValidator(_in_utc_range)]
"""A point in time every service can convert to UTC."""

# Deeper forms are refused: no form of the catalogue nests beyond a few levels, and the JSON-Schema validator and
# the serialisers give up at a few hundred (an error, not an answer).
MAX_FORM_DEPTH = 32


def _valid_text(text: str) -> None:
    # JSON may carry a lone surrogate (\ud800); it is no character, cannot be written as UTF-8, and would fail the
    # event's serialisation or the database (an error, not an answer).
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError("the form holds text that is not valid Unicode (a lone surrogate)") from None


def _shallow(form: dict[str, object]) -> dict[str, object]:
    # The objects and arrays one level down, level by level: the form itself is level 1. Its text on the way.
    level: list[dict[str, object] | list[object]] = [form]
    for _ in range(MAX_FORM_DEPTH):
        deeper: list[dict[str, object] | list[object]] = []
        for container in level:
            if isinstance(container, dict):
                for key in container:
                    _valid_text(key)
            for child in container.values() if isinstance(container, dict) else container:
                if isinstance(child, dict | list):
                    deeper.append(child)
                elif isinstance(child, str):
                    _valid_text(child)
        if not deeper:
            return form
        level = deeper
    raise ValueError(f"the form nests objects and arrays deeper than {MAX_FORM_DEPTH} levels")


FormData = Annotated[dict[str, object], AfterValidator(_shallow)]
"""A form's data: any JSON object (its service's JSON Schema checks it) nested at most ``MAX_FORM_DEPTH`` levels,
its text valid Unicode."""


class Strict(BaseModel):
    """Base of all event data: unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class CaseStatus(enum.StrEnum):
    """The case status model of SPEC §4."""

    SUBMITTED = "submitted"
    ROUTED = "routed"
    UNROUTABLE = "unroutable"
    RECEIVED = "received"
    REJECTED = "rejected"
    IN_PROGRESS = "in_progress"
    INFORMATION_REQUESTED = "information_requested"
    DECIDED = "decided"
    CLOSED = "closed"
    WITHDRAWN = "withdrawn"


# The statuses a case never leaves (SPEC §4).
ENDED_STATUSES: frozenset[CaseStatus] = frozenset({CaseStatus.CLOSED, CaseStatus.REJECTED, CaseStatus.WITHDRAWN})


class ReplyChannel(enum.StrEnum):
    """How the applicant wants to hear from the authority."""

    EMAIL = "email"
    POSTFACH = "postfach"
    LETTER = "letter"


class ClientKind(enum.StrEnum):
    """The kinds of API client of SPEC §5."""

    PORTAL = "portal"
    COUNTER = "counter"
    DESTINATION = "destination"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Region(Strict):
    """Where the application belongs: an ARS, an AGS, or a postal code with the place name."""

    ars: Ars | None = None
    ags: Ags | None = None
    postal_code: PostalCode | None = None
    place: Annotated[Line, Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> Region:
        given = [self.ars is not None, self.ags is not None, self.postal_code is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of ars, ags or postal_code (with place)")
        if self.place is not None and self.postal_code is None:
            raise ValueError("place is only meaningful together with postal_code")
        return self


class PostalAddress(Strict):
    """A postal address in Germany, for letters."""

    street: Annotated[Line, Field(min_length=1, max_length=100)]
    postal_code: PostalCode
    city: Annotated[Line, Field(min_length=1, max_length=100)]
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "DE"


class Contact(Strict):
    """How to reach the applicant; the reply channel decides which field is required."""

    email: EmailStr | None = None
    postfach_id: Annotated[Line, Field(min_length=1, max_length=200)] | None = None
    address: PostalAddress | None = None


class Applicant(Strict):
    """The applicant (personal data: only on topics marked so in SPEC §3)."""

    name: Annotated[Line, Field(min_length=1, max_length=200)]
    contact: Contact
    reply_channel: ReplyChannel
    language: Literal["de", "en"] = "de"

    @model_validator(mode="after")
    def _channel_reachable(self) -> Applicant:
        needed = {
            ReplyChannel.EMAIL: ("email", self.contact.email),
            ReplyChannel.POSTFACH: ("postfach_id", self.contact.postfach_id),
            ReplyChannel.LETTER: ("address", self.contact.address),
        }[self.reply_channel]
        if needed[1] is None:
            raise ValueError(f"reply_channel {self.reply_channel.value} needs contact.{needed[0]}")
        return self


class AttachmentRef(Strict):
    """A claim-check: the attachment itself stays in intake's blob store."""

    attachment_id: UUID
    filename: Annotated[Line, Field(min_length=1, max_length=255)]
    media_type: Annotated[Line, Field(min_length=1, max_length=64)]
    size: int
    sha512: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


class ApplicationSubmitted(Strict):
    """``de.ozg.application.submitted.v1``: intake accepted an application (carries personal data)."""

    case_id: UUID
    reference: Reference
    leika_key: LeikaKey
    region: Region
    applicant: Applicant
    form: FormData
    attachments: list[AttachmentRef] = Field(default_factory=list)
    client_id: UUID
    client_kind: ClientKind
    submitted_at: Instant


class ResolvedRegion(Strict):
    """The Gemeinde the application's place resolved to."""

    ars: Ars
    ags: Ags
    name: Annotated[Line, Field(max_length=100)]


class AuthorityLevel(enum.StrEnum):
    """The administrative level of a competent authority."""

    GEMEINDE = "gemeinde"
    VERBAND = "verband"
    KREIS = "kreis"
    LAND = "land"


class Authority(Strict):
    """The competent authority; ``ars`` is its own key (12, 9, 5 or 2 digits by level)."""

    ars: Annotated[str, Field(pattern=r"^(\d{2}|\d{5}|\d{9}|\d{12})$")]
    name: Annotated[Line, Field(max_length=300)]
    level: AuthorityLevel


class ApplicationRouted(Strict):
    """``de.ozg.application.routed.v1``: metadata only, no personal data."""

    case_id: UUID
    reference: Reference
    leika_key: LeikaKey
    region: ResolvedRegion
    authority: Authority
    rule: Annotated[Line, Field(max_length=100)]
    destination_id: UUID
    destination_name: Annotated[Line, Field(max_length=200)]
    manual: bool = False


class UnroutableReason(enum.StrEnum):
    """Why routing could not find a destination."""

    UNKNOWN_REGION = "unknown_region"
    AMBIGUOUS_POSTAL_CODE = "ambiguous_postal_code"
    NO_COMPETENCE_RULE = "no_competence_rule"
    NO_DESTINATION = "no_destination"


class ApplicationUnroutable(Strict):
    """``de.ozg.application.unroutable.v1``: the case waits in clearing (no personal data)."""

    case_id: UUID
    reference: Reference
    leika_key: LeikaKey
    reason: UnroutableReason
    detail: Annotated[Lines, Field(max_length=500)]
    candidates: list[ResolvedRegion] = Field(default_factory=list)


class ApplicationDispatched(Strict):
    """``de.ozg.application.dispatched.v1`` on ``ozg.dest.<id>``: the whole case for its destination."""

    case_id: UUID
    reference: Reference
    destination_id: UUID
    routing: ApplicationRouted
    application: ApplicationSubmitted


class Problem(Strict):
    """An RFC 9457-style problem, as a back office reports it when it rejects a case."""

    # Unbounded here, as published so far: routing bounds what a back office may report (its ProblemIn).
    type: Line = "about:blank"
    title: Line
    detail: Lines | None = None
    instance: Line | None = None


class Outcome(enum.StrEnum):
    """The decision on an application."""

    APPROVED = "approved"
    DENIED = "denied"
    PARTIALLY_APPROVED = "partially_approved"


class CaseStatusChanged(Strict):
    """``de.ozg.case.status-changed.v1``: no personal data apart from a message to the applicant."""

    case_id: UUID
    reference: Reference
    status: CaseStatus
    previous_status: CaseStatus | None = None
    leika_key: LeikaKey | None = None
    destination_id: UUID | None = None
    outcome: Outcome | None = None
    message: Annotated[Lines, Field(max_length=5000)] | None = None
    problems: list[Problem] = Field(default_factory=list)
    changed_at: Instant

    @property
    def refuses_withdrawal(self) -> bool:
        """Whether this is routing's refusal of a withdrawal that came too late: the status it names stands."""
        return self.previous_status == CaseStatus.WITHDRAWN and self.status != CaseStatus.WITHDRAWN


class NotificationOutcome(Strict):
    """``de.ozg.notification.sent.v1`` / ``.failed.v1``: what notify did (no personal data)."""

    notification_id: UUID
    case_id: UUID
    channel: ReplyChannel
    trigger_event_id: Annotated[Line, Field(max_length=200)]
    trigger_type: Annotated[Line, Field(max_length=100)]
    attempts: int
    error: str | None = None


class ClientRecord(Strict):
    """``de.ozg.client.registered.v1`` / ``.revoked.v1`` on the compacted ``ozg.clients`` topic.

    Only the SHA-256 of the API key travels; the key itself is shown once by the CLI and stored nowhere.
    """

    client_id: UUID
    name: Annotated[Line, Field(max_length=200)]
    kind: ClientKind
    scopes: list[str]
    key_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    destination_id: UUID | None = None
    revoked: bool = False
    issued_at: Instant


class PersonalDataDeleted(Strict):
    """``de.ozg.personal-data.deleted.v1`` on ``ozg.privacy.deletions``: a service deleted a case's personal data
    after its retention period (SPEC §7). Names what was deleted, never the data itself."""

    case_id: UUID
    service: str = Field(description="The service that deleted the data, e.g. intake")
    categories: list[str] = Field(description="What was deleted, e.g. applicant, form, attachments")
    deleted_at: Instant
    reason: str = "retention"


# The data model of each event type: what consumers validate an event's data against.
DATA_MODELS: dict[str, type[BaseModel]] = {
    SUBMITTED_V1: ApplicationSubmitted,
    ROUTED_V1: ApplicationRouted,
    UNROUTABLE_V1: ApplicationUnroutable,
    DISPATCHED_V1: ApplicationDispatched,
    STATUS_CHANGED_V1: CaseStatusChanged,
    NOTIFICATION_SENT_V1: NotificationOutcome,
    NOTIFICATION_FAILED_V1: NotificationOutcome,
    CLIENT_REGISTERED_V1: ClientRecord,
    CLIENT_REVOKED_V1: ClientRecord,
    PERSONAL_DATA_DELETED_V1: PersonalDataDeleted,
}
