"""Intake's store on SQLite and PostgreSQL: migrations, attachment binding, outbox and sweep queries, the group
commit of submissions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.intake.app import MIGRATIONS
from services.intake.models import Attachment, Case, CaseHistory, CaseState, NewCase
from services.intake.store import (
    AttachmentsTaken,
    InFlight,
    IntakeStore,
    KeyReused,
    Replay,
    Reservation,
    Reserved,
    StatusChange,
    new_reference,
)
from services.intake.writer import SubmissionWriter
from shared import db
from shared.events import CaseStatus


def candidate(client_id: uuid.UUID, key: str, at: datetime) -> NewCase:
    return NewCase(case_id=uuid.uuid4(), reference=new_reference(at), leika_key="99115005104000", submitted_at=at,
                   client_id=client_id, idempotency_key=key, body_hash="h" * 64, event_id=str(uuid.uuid4()),
                   submission="{}")


def migrated(database_url: str) -> tuple[Engine, IntakeStore]:
    engine = db.make_engine(database_url)
    db.migrate(engine, MIGRATIONS, "intake")
    return engine, IntakeStore(engine)


def test_binding_release_outbox_and_sweep(database_url: str) -> None:
    engine, store = migrated(database_url)
    client, other = uuid.uuid4(), uuid.uuid4()
    long_ago = datetime.now(UTC) - timedelta(days=2)
    files = [Attachment(attachment_id=uuid.uuid4(), client_id=client, filename="a.pdf", media_type="application/pdf",
                        size=10, sha512="0" * 128, created_at=long_ago) for _ in range(2)]
    ids = [row.attachment_id for row in files]
    for row in files:
        store.add_attachment(row)

    assert set(store.owned_attachments(ids, client)) == set(ids)
    assert store.owned_attachments(ids, other) == {}
    first = store.reserve(candidate(client, "k1", long_ago), ids)
    assert isinstance(first, Reserved)
    assert store.reserve(candidate(client, "k2", long_ago), ids[:1]) == AttachmentsTaken((0,))
    assert store.unreferenced_before(datetime.now(UTC)) == []

    # The outbox sees the old pending case; accepting it is idempotent and drops the stored event data.
    assert [c.case_id for c in store.pending_before(datetime.now(UTC))] == [first.case.case_id]
    store.accept(first.case.case_id)
    accepted = store.accept(first.case.case_id)
    assert accepted.state == CaseState.ACCEPTED
    assert accepted.submission is None
    assert store.pending_before(datetime.now(UTC)) == []

    # A released reservation frees its attachments; the sweep then takes them, once.
    second = store.reserve(candidate(client, "k3", datetime.now(UTC)), [])
    assert isinstance(second, Reserved)
    store.release(second.case.case_id)
    orphan = Attachment(attachment_id=uuid.uuid4(), client_id=client, filename="b.png", media_type="image/png",
                        size=5, sha512="1" * 128, created_at=long_ago)
    orphan_id = orphan.attachment_id
    store.add_attachment(orphan)
    assert store.unreferenced_before(datetime.now(UTC)) == [orphan_id]
    assert store.forget_unreferenced(orphan_id) is True
    assert store.forget_unreferenced(orphan_id) is False
    assert store.forget_unreferenced(ids[0]) is False  # referenced: kept
    engine.dispose()


def test_status_events_read_out_of_order_keep_the_latest_status(database_url: str) -> None:
    """routed and status-changed travel on different topics: a restarted consumer may read them in either order."""
    engine, store = migrated(database_url)
    client, destination = uuid.uuid4(), uuid.uuid4()
    submitted_at = datetime.now(UTC) - timedelta(minutes=5)
    reserved = store.reserve(candidate(client, "k", submitted_at), [])
    assert isinstance(reserved, Reserved)
    case_id = reserved.case.case_id
    store.accept(case_id)
    routed_at, received_at = submitted_at + timedelta(seconds=1), submitted_at + timedelta(seconds=2)

    assert store.record_status("received-event", case_id, CaseStatus.RECEIVED, received_at)
    assert store.record_status("routed-event", case_id, CaseStatus.ROUTED, routed_at, "Stadt Kelheim", destination)
    assert not store.record_status("routed-event", case_id, CaseStatus.ROUTED, routed_at)  # a redelivery

    case = store.get(case_id, client)
    assert case is not None
    assert case.status == CaseStatus.RECEIVED
    assert [entry.status for entry in case.history] == [CaseStatus.SUBMITTED, CaseStatus.ROUTED, CaseStatus.RECEIVED]
    with Session(engine) as session:
        row = session.get(Case, case_id)
        assert row is not None
        assert row.destination_id == destination  # the routed event still names the destination
    engine.dispose()


def test_a_batch_of_status_events_is_applied_once_in_one_go(database_url: str) -> None:
    """The consumer's batch: out of order, a redelivery inside the batch and one already applied, another case's
    event, and one of a case intake does not have; each counts as if applied one after the other."""
    engine, store = migrated(database_url)
    client, destination = uuid.uuid4(), uuid.uuid4()
    submitted_at = datetime.now(UTC) - timedelta(minutes=5)
    first, second = (store.reserve(candidate(client, key, submitted_at), []) for key in ("first", "second"))
    assert isinstance(first, Reserved)
    assert isinstance(second, Reserved)
    for reserved in (first, second):
        store.accept(reserved.case.case_id)
    one, two = first.case.case_id, second.case.case_id
    at = [submitted_at + timedelta(seconds=n) for n in range(4)]
    assert store.record_status("applied-before", two, CaseStatus.ROUTED, at[1], "Stadt Kelheim", destination)

    applied = store.record_statuses([
        StatusChange("received", one, CaseStatus.RECEIVED, at[2]),
        StatusChange("routed", one, CaseStatus.ROUTED, at[1], "Stadt Kelheim", destination),
        StatusChange("routed", one, CaseStatus.ROUTED, at[1], "Stadt Kelheim", destination),
        StatusChange("applied-before", two, CaseStatus.ROUTED, at[1], "Stadt Kelheim", destination),
        StatusChange("in-progress", two, CaseStatus.IN_PROGRESS, at[3]),
        StatusChange("not-ours", uuid.uuid4(), CaseStatus.RECEIVED, at[2]),
    ])

    assert applied == {"received", "routed", "in-progress"}
    case = store.get(one, client)
    assert case is not None
    assert case.status == CaseStatus.RECEIVED  # the latest in time, though read first
    assert [e.status for e in case.history] == [CaseStatus.SUBMITTED, CaseStatus.ROUTED, CaseStatus.RECEIVED]
    other = store.get(two, client)
    assert other is not None
    assert other.status == CaseStatus.IN_PROGRESS
    assert [e.status for e in other.history] == [CaseStatus.SUBMITTED, CaseStatus.ROUTED, CaseStatus.IN_PROGRESS]
    with Session(engine) as session:
        row = session.get(Case, one)
        assert row is not None
        assert row.destination_id == destination
    assert store.record_statuses([StatusChange("received", one, CaseStatus.RECEIVED, at[2])]) == set()
    engine.dispose()


def test_an_ended_case_stays_ended(database_url: str) -> None:
    """A withdrawal can overtake the routing decision (routing then dispatches and withdraws the case): the later
    routed event joins the history, the case stays withdrawn; a withdrawal read late still ends the case."""
    engine, store = migrated(database_url)
    client = uuid.uuid4()
    submitted_at = datetime.now(UTC) - timedelta(minutes=5)
    early, late = (store.reserve(candidate(client, key, submitted_at), []) for key in ("early", "late"))
    assert isinstance(early, Reserved)
    assert isinstance(late, Reserved)
    for reserved in (early, late):
        store.accept(reserved.case.case_id)
    withdrawn_at, routed_at = submitted_at + timedelta(seconds=1), submitted_at + timedelta(seconds=2)

    early_id = early.case.case_id
    assert store.record_status("withdrawn-early", early_id, CaseStatus.WITHDRAWN, withdrawn_at)
    assert store.record_status("routed-early", early_id, CaseStatus.ROUTED, routed_at, "Stadt Kelheim")
    case = store.get(early_id, client)
    assert case is not None
    assert case.status == CaseStatus.WITHDRAWN
    assert [e.status for e in case.history] == [CaseStatus.SUBMITTED, CaseStatus.WITHDRAWN, CaseStatus.ROUTED]

    # Read the other way round (the routed event first, the earlier withdrawal later): withdrawn all the same.
    late_id = late.case.case_id
    assert store.record_status("routed-late", late_id, CaseStatus.ROUTED, routed_at, "Stadt Kelheim")
    assert store.record_status("withdrawn-late", late_id, CaseStatus.WITHDRAWN, withdrawn_at)
    case = store.get(late_id, client)
    assert case is not None
    assert case.status == CaseStatus.WITHDRAWN
    engine.dispose()


def test_routings_refusal_of_a_withdrawal_undoes_it(database_url: str) -> None:
    """Intake accepted a withdrawal against its copy of the status while routing had the case decided already:
    the decision joins the history only (the case ended), then routing's refusal (decided, previous_status
    withdrawn) sets the status back; an ordinary event cannot."""
    engine, store = migrated(database_url)
    client = uuid.uuid4()
    submitted_at = datetime.now(UTC) - timedelta(minutes=5)
    reserved = store.reserve(candidate(client, "refused", submitted_at), [])
    assert isinstance(reserved, Reserved)
    store.accept(reserved.case.case_id)
    case_id = reserved.case.case_id
    at = [submitted_at + timedelta(seconds=n) for n in range(6)]
    assert store.record_status("routed", case_id, CaseStatus.ROUTED, at[1], "Stadt Kelheim")
    assert store.record_status("withdrawn", case_id, CaseStatus.WITHDRAWN, at[3])
    assert store.record_status("decided", case_id, CaseStatus.DECIDED, at[2], "Bescheid")
    assert store.record_statuses([StatusChange("in-progress", case_id, CaseStatus.IN_PROGRESS, at[4])])
    stale = store.get(case_id, client)
    assert stale is not None
    assert stale.status == CaseStatus.WITHDRAWN

    assert store.record_statuses([StatusChange("refused", case_id, CaseStatus.DECIDED, at[5],
                                               refuses_withdrawal=True)])
    case = store.get(case_id, client)
    assert case is not None
    assert case.status == CaseStatus.DECIDED
    assert [e.status for e in case.history][-2:] == [CaseStatus.IN_PROGRESS, CaseStatus.DECIDED]
    engine.dispose()


async def test_group_commit_gives_each_request_its_own_outcome(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent submissions are written in a few batched transactions; per (client, key) exactly one case, and
    every other request with that key is told what the one-by-one path would have told it."""
    engine, store = migrated(database_url)
    transactions = 0
    write_batch = store.write_batch

    def counted(candidates: Sequence[NewCase], acceptances: Sequence[NewCase]) -> list[Reservation]:
        nonlocal transactions
        transactions += 1
        return write_batch(candidates, acceptances)

    monkeypatch.setattr(store, "write_batch", counted)
    writer = SubmissionWriter(store)
    client, other = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    # Seen before: one key accepted already (a replay), one still pending (in flight).
    done = await writer.reserve(candidate(client, "done", now))
    assert isinstance(done, Reserved)
    await writer.accept(done.case)
    assert isinstance(await writer.reserve(candidate(client, "pending", now)), Reserved)

    requests = [candidate(client, "done", now), with_body(candidate(client, "done", now), "x"),
                candidate(client, "pending", now), with_body(candidate(client, "pending", now), "x")]
    for index in range(40):
        key = f"k{index % 10}"  # four requests per key: two bodies, two clients (keys are scoped to the client)
        requests.append(with_body(candidate(client if index < 30 else other, key, now), "hx"[index % 20 // 10]))
    transactions = 0
    outcomes = await asyncio.gather(*(writer.reserve(request) for request in requests))
    assert transactions < len(requests) / 4

    replay, reused, in_flight, reused_pending = outcomes[:4]
    assert isinstance(replay, Replay)
    assert replay.case.case_id == done.case.case_id
    assert replay.case.reference == done.case.reference
    assert isinstance(reused, KeyReused)
    assert isinstance(in_flight, InFlight)
    assert isinstance(reused_pending, KeyReused)
    winners: dict[tuple[uuid.UUID, str], NewCase] = {}
    for request, outcome in zip(requests[4:], outcomes[4:], strict=True):
        if isinstance(outcome, Reserved):
            assert (request.client_id, request.idempotency_key) not in winners
            assert outcome.case is request
            winners[request.client_id, request.idempotency_key] = request
    assert len(winners) == 20
    for request, outcome in zip(requests[4:], outcomes[4:], strict=True):
        winner = winners[request.client_id, request.idempotency_key]
        if outcome != Reserved(request):
            expected = InFlight if request.body_hash == winner.body_hash else KeyReused
            assert isinstance(outcome, expected)

    # Accepting (twice for one case: idempotent) clears the stored event data; one history entry per case.
    accepted = await asyncio.gather(*(writer.accept(case) for case in [*winners.values(), *list(winners.values())[:1]]))
    assert all(case.state == CaseState.ACCEPTED and case.submission is None for case in accepted)
    with Session(engine) as session:
        rows = session.exec(select(Case).where(col(Case.idempotency_key).startswith("k"))).all()
        assert {(row.client_id, row.idempotency_key): row.case_id for row in rows} == {
            pair: case.case_id for pair, case in winners.items()}
        assert all(row.state == CaseState.ACCEPTED and row.submission is None for row in rows)
        history = session.exec(select(CaseHistory.case_id, CaseHistory.status)).all()
        assert sorted(history) == sorted((case_id, CaseStatus.SUBMITTED)
                                         for case_id in [done.case.case_id, *(c.case_id for c in winners.values())])

    # The same requests again: replays of the accepted cases, or the key reused.
    again = await asyncio.gather(*(writer.reserve(request) for request in requests[4:]))
    for request, outcome in zip(requests[4:], again, strict=True):
        winner = winners[request.client_id, request.idempotency_key]
        if request.body_hash == winner.body_hash:
            assert isinstance(outcome, Replay)
            assert outcome.case.case_id == winner.case_id
        else:
            assert isinstance(outcome, KeyReused)
    engine.dispose()


async def test_group_commit_hitting_a_unique_index_decides_one_by_one(database_url: str) -> None:
    """A batch that hits a unique index (here a reference that collided) is done again request by request: only the
    request that collided is refused (as in flight: its retry gets a new reference), the others are reserved."""
    engine, store = migrated(database_url)
    writer = SubmissionWriter(store)
    client, now = uuid.uuid4(), datetime.now(UTC)
    first = await writer.reserve(candidate(client, "first", now))
    assert isinstance(first, Reserved)
    colliding = candidate(client, "colliding", now)
    colliding.reference = first.case.reference
    requests = [candidate(client, "before", now), colliding, candidate(client, "after", now)]
    before, collided, after = await asyncio.gather(*(writer.reserve(request) for request in requests))
    assert isinstance(before, Reserved)
    assert isinstance(collided, InFlight)
    assert isinstance(after, Reserved)
    with Session(engine) as session:
        assert sorted(session.exec(select(Case.idempotency_key)).all()) == ["after", "before", "first"]
    engine.dispose()


def with_body(case: NewCase, body: str) -> NewCase:
    case.body_hash = body * 64
    return case


def test_a_reservation_names_the_attachments_another_application_took(database_url: str) -> None:
    _, store = migrated(database_url)
    client = uuid.uuid4()
    now = datetime.now(UTC)
    files = [Attachment(attachment_id=uuid.uuid4(), client_id=client, filename=f"{n}.pdf",
                        media_type="application/pdf", size=10, sha512="0" * 128, created_at=now) for n in range(3)]
    second = [row.attachment_id for row in files]
    for row in files:
        store.add_attachment(row)
    assert isinstance(store.reserve(candidate(client, "k1", now), [second[1]]), Reserved)
    assert store.reserve(candidate(client, "k2", now), second) == AttachmentsTaken((1,))
    # The whole reservation is undone: the free ones stay free.
    owned = store.owned_attachments(second, client)
    assert [owned[a].case_id is None for a in second] == [True, False, True]
