"""What an audit entry takes from an event: identity, position, digest and closed-vocabulary fields only."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from services.audit.handlers import append_patiently, entry_of
from services.audit.store import NewEntry
from shared import events, topics
from shared.envelope import InvalidEvent, OutgoingEvent, build_event, parse_event
from shared.events import ApplicationUnroutable, CaseStatus, CaseStatusChanged, UnroutableReason
from tests.factories import submitted


def entry(event: OutgoingEvent, topic: str = topics.CASE_STATUS) -> NewEntry:
    envelope = parse_event({k: v.encode() for k, v in event.headers.items()}, event.value, event.key)
    return entry_of(envelope, topic=topic, partition=2, offset=7, value=event.value)


def test_submitted_event_leaves_only_its_digest() -> None:
    data = submitted()
    event = build_event(event_type=events.SUBMITTED_V1, source="/ozg/intake", subject=str(data.case_id), data=data)
    got = entry(event, topics.SUBMITTED)
    assert got == NewEntry(
        event_id=event.event_id, event_type=events.SUBMITTED_V1, source="/ozg/intake", subject=str(data.case_id),
        event_time=got.event_time, topic=topics.SUBMITTED, partition=2, offset=7,
        data_sha256=hashlib.sha256(event.value).hexdigest(), status="submitted", destination_id=None, reason=None,
    )
    assert got.event_time.tzinfo is not None
    assert data.applicant.name not in repr(got)


def test_status_and_destination_come_from_the_data() -> None:
    destination = uuid.uuid4()
    data = CaseStatusChanged(case_id=uuid.uuid4(), reference="OZG-2026-AAAA-BBBB", status=CaseStatus.IN_PROGRESS,
                             destination_id=destination, message="Sehr geehrte Frau Mustermann, …",
                             changed_at=datetime.now(UTC))
    event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject=str(data.case_id),
                        data=data)
    got = entry(event)
    assert (got.status, got.destination_id, got.reason) == ("in_progress", destination, None)
    assert "Mustermann" not in repr(got)


def test_unroutable_reason_and_implied_status() -> None:
    data = ApplicationUnroutable(case_id=uuid.uuid4(), reference="OZG-2026-AAAA-BBBB", leika_key="99107023037000",
                                 reason=UnroutableReason.NO_DESTINATION, detail="Musterstraße 1, Kelheim")
    event = build_event(event_type=events.UNROUTABLE_V1, source="/ozg/routing", subject=str(data.case_id),
                        data=data)
    got = entry(event, topics.UNROUTABLE)
    assert (got.status, got.reason, got.destination_id) == ("unroutable", "no_destination", None)


class Loose(BaseModel):
    status: str
    reason: str
    destination_id: str


def test_free_text_in_query_fields_is_not_kept() -> None:
    data = Loose(status="Erika Mustermann", reason="lives at Musterstraße 1", destination_id="not-a-uuid")
    event = build_event(event_type="de.example.unknown.v1", source="/elsewhere", subject="x", data=data)
    got = entry(event)
    assert (got.status, got.reason, got.destination_id) == (None, None, None)


def test_overlong_attributes_are_poison() -> None:
    event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject="x",
                        data=Loose(status="closed", reason="", destination_id=""), event_id="e" * 201)
    with pytest.raises(InvalidEvent, match="ce_id"):
        entry(event)


class FlakyStore:
    """A store whose database is unreachable for the first few appends."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.appended: list[NewEntry] = []

    def append(self, entry: NewEntry) -> bool:
        if self.failures:
            self.failures -= 1
            raise OperationalError("INSERT ...", {}, Exception("connection refused"))
        self.appended.append(entry)
        return True


async def test_unreachable_database_is_waited_out_not_dead_lettered() -> None:
    store = FlakyStore(failures=4)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject="x",
                        data=Loose(status="closed", reason="", destination_id=""))
    assert await append_patiently(store, entry(event), max_delay_s=2.0, sleep=sleep)  # type: ignore[arg-type]
    assert len(store.appended) == 1
    assert slept == [0.5, 1.0, 2.0, 2.0]
