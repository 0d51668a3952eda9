"""What an audit entry takes from an event: identity, position, digest and closed-vocabulary fields only."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from services.audit.app import MIGRATIONS
from services.audit.handlers import append_patiently, entry_of, record_batch
from services.audit.signing import CheckpointSigner
from services.audit.store import AuditStore, NewEntry
from shared import db, events, topics
from shared.envelope import InvalidEvent, OutgoingEvent, build_event, parse_event
from shared.events import (
    ApplicationUnroutable,
    CaseStatus,
    CaseStatusChanged,
    PersonalDataDeleted,
    UnroutableReason,
)
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


def test_a_known_type_whose_data_breaks_its_model_is_poison() -> None:
    data = Loose(status="closed", reason="Erika Mustermann", destination_id="")
    event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject="x", data=data)
    with pytest.raises(InvalidEvent, match="does not match CaseStatusChanged") as raised:
        entry(event)
    assert "Mustermann" not in str(raised.value)


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

    def append_many(self, entries: list[NewEntry]) -> list[dict[str, Any]]:
        if self.failures:
            self.failures -= 1
            raise OperationalError("INSERT ...", {}, Exception("connection refused"))
        self.appended.extend(entries)
        return [{"event_id": entry.event_id} for entry in entries]


async def test_unreachable_database_is_waited_out_not_dead_lettered() -> None:
    store = FlakyStore(failures=4)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    event = status_event(uuid.uuid4(), CaseStatus.CLOSED)
    assert await append_patiently(store, [entry(event)], max_delay_s=2.0, sleep=sleep)  # type: ignore[arg-type]
    assert len(store.appended) == 1
    assert slept == [0.5, 1.0, 2.0, 2.0]


def record(event: OutgoingEvent | None, topic: str, offset: int, value: bytes | None = None
           ) -> ConsumerRecord[bytes, bytes]:
    """A consumed Kafka record of ``event`` (or a raw ``value`` without headers)."""
    headers = [(k, v.encode()) for k, v in event.headers.items()] if event else []
    body = event.value if event else value
    return ConsumerRecord(topic=topic, partition=0, offset=offset, timestamp=0, timestamp_type=0,
                          key=event.key if event else None, value=body, checksum=None, serialized_key_size=0,
                          serialized_value_size=len(body or b""), headers=headers)


def status_event(case_id: uuid.UUID, status: CaseStatus) -> OutgoingEvent:
    data = CaseStatusChanged(case_id=case_id, reference="OZG-2026-AAAA-BBBB", status=status,
                             changed_at=datetime.now(UTC))
    return build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject=str(case_id), data=data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    db.migrate(engine, MIGRATIONS, "audit")
    yield AuditStore(engine, CheckpointSigner(Ed25519PrivateKey.generate()))
    engine.dispose()


async def test_batch_is_appended_in_order_and_poison_dead_lettered_one_by_one(store: AuditStore) -> None:
    case_id = uuid.uuid4()
    first, second, third = (status_event(case_id, s) for s in
                            (CaseStatus.RECEIVED, CaseStatus.IN_PROGRESS, CaseStatus.DECIDED))
    batch = [
        record(first, topics.CASE_STATUS, 10),
        record(None, topics.CASE_STATUS, 11, b"not a CloudEvent"),
        record(second, topics.CASE_STATUS, 12),
        record(first, topics.CASE_STATUS, 10),  # redelivered within the batch
        record(build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject="x",
                           data=Loose(status="closed", reason="", destination_id=""), event_id="e" * 201),
               topics.CASE_STATUS, 13),
        record(third, topics.CASE_STATUS, 14),
    ]
    dead: list[tuple[int, str]] = []

    async def dead_letter(rec: ConsumerRecord[Any, Any], error: BaseException) -> None:
        assert isinstance(error, InvalidEvent)
        dead.append((rec.offset, type(error).__name__))

    rows = await record_batch(batch, store, dead_letter)
    assert [row["offset"] for row in rows] == [10, 12, 14]
    assert [row["seq"] for row in rows] == [1, 2, 3]
    assert dead == [(11, "InvalidEvent"), (13, "InvalidEvent")]
    trail = store.trail(str(case_id))
    assert [e.status for e in trail] == ["received", "in_progress", "decided"]
    # The whole batch again (a redelivery after a crash): nothing new in the chain.
    assert await record_batch(batch, store, dead_letter) == []
    assert store.verify().length == 3


async def test_batch_waits_out_a_database_outage() -> None:
    flaky = FlakyStore(failures=2)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def dead_letter(_rec: ConsumerRecord[Any, Any], _error: BaseException) -> None:
        raise AssertionError("a database outage must not dead-letter anything")

    batch = [record(status_event(uuid.uuid4(), CaseStatus.CLOSED), topics.CASE_STATUS, n) for n in range(3)]
    rows = await record_batch(batch, flaky, dead_letter, sleep=sleep)  # type: ignore[arg-type]
    assert len(rows) == 3
    assert slept == [0.5, 1.0]


def test_deletion_of_personal_data_is_an_audited_event() -> None:
    data = PersonalDataDeleted(case_id=uuid.uuid4(), service="intake", categories=["applicant", "form"],
                               deleted_at=datetime.now(UTC))
    event = build_event(event_type=events.PERSONAL_DATA_DELETED_V1, source="/ozg/intake",
                        subject=str(data.case_id), data=data)
    got = entry(event, topics.DELETIONS)
    assert (got.status, got.reason, got.destination_id) == ("personal_data_deleted", "retention", None)
    assert got.event_type == events.PERSONAL_DATA_DELETED_V1
    # A reason outside the closed vocabulary (free text could name a person) is not kept.
    loose = data.model_copy(update={"reason": "Frau Mustermann asked"})
    assert entry(build_event(event_type=events.PERSONAL_DATA_DELETED_V1, source="/ozg/intake",
                             subject=str(data.case_id), data=loose), topics.DELETIONS).reason is None
