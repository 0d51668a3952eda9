"""Intake's database operations; synchronous, called from async code through a worker thread."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.intake.models import Attachment, Case, CaseHistory, CasePublic, CaseState, HistoryEntry, NewCase
from shared.db import table_of
from shared.events import ENDED_STATUSES, CaseStatus
from shared.idempotency import claim_batch
from shared.retention import record_deletion

# A history entry's detail is a back office's message to the applicant, except for ``routed``: the authority's name.
_MESSAGE = (col(CaseHistory.status) != CaseStatus.ROUTED) & col(CaseHistory.detail).is_not(None)

# Crockford's base32 without I, L, O, U: no two characters a clerk reading aloud could confuse.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored in UTC); events carry aware ones.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def new_reference(now: datetime | None = None) -> str:
    """A human-readable case reference such as ``OZG-2026-8F3K-2QXD`` (40 random bits)."""
    year = (now or datetime.now(UTC)).year
    # One read of the system's randomness for all eight characters (five bits each), not one per character.
    bits = int.from_bytes(secrets.token_bytes(5))
    chars = "".join(_ALPHABET[(bits >> shift) & 31] for shift in range(35, -1, -5))
    return f"OZG-{year}-{chars[:4]}-{chars[4:]}"


@dataclass(frozen=True)
class StatusChange:
    """What a status event says about one of intake's cases."""

    event_id: str
    case_id: UUID
    status: CaseStatus
    at: datetime
    detail: str | None = None
    destination_id: UUID | None = None
    # Routing's refusal of a withdrawal that came too late (``CaseStatusChanged.refuses_withdrawal``).
    refuses_withdrawal: bool = False


@dataclass(frozen=True)
class Reserved:
    """A new case was reserved; its submitted event must now be published."""

    case: NewCase


@dataclass(frozen=True)
class Replay:
    """The same key and body were seen before: answer as then."""

    case: Case


@dataclass(frozen=True)
class KeyReused:
    """The same key came with another body."""


@dataclass(frozen=True)
class InFlight:
    """The same key is being processed right now."""


@dataclass(frozen=True)
class AttachmentsTaken:
    """Attachments named in the application already belong to another one: ``positions`` are their indexes in the
    application's list."""

    positions: tuple[int, ...]


Reservation = Reserved | Replay | KeyReused | InFlight | AttachmentsTaken


class _Statements:
    """The statements of the batch paths (the group commit, the status consumer), built once: constructing them
    anew for every batch (coercions, cache keys) cost SQLAlchemy more CPU than SQLite needed to run them."""

    def __init__(self) -> None:
        cases, history = table_of(Case), table_of(CaseHistory)
        # Two lists, not a list of pairs: SQLite answers "(a, b) IN (VALUES ...)" with a scan of the whole table,
        # these with lookups in the unique index (a batch comes from few clients). Other clients' rows that match
        # only across the lists are dropped by the caller.
        self.lookup = cases.select().where(cases.c.client_id.in_(bindparam("clients", expanding=True)),
                                           cases.c.idempotency_key.in_(bindparam("keys", expanding=True)))
        self.insert_cases = insert(cases)
        # Only the cases still pending change and get their history entry: accepting is idempotent.
        self.accept = (update(cases).where(cases.c.case_id.in_(bindparam("ids", expanding=True)),
                                           cases.c.state == CaseState.PENDING)
                       .values(state=CaseState.ACCEPTED, submission=None).returning(cases.c.case_id))
        self.insert_history = insert(history)
        self.statuses = (cases.select()
                         .with_only_columns(cases.c.case_id, cases.c.status, cases.c.updated_at, cases.c.destination_id)
                         .where(cases.c.case_id.in_(bindparam("ids", expanding=True))).with_for_update())
        self.set_status = update(cases).where(cases.c.case_id == bindparam("b_case_id")).values(
            status=bindparam("b_status"), updated_at=bindparam("b_updated_at"),
            destination_id=bindparam("b_destination_id"))


class IntakeStore:
    """Cases, their history and the idempotency keys of submissions."""

    CONSUMER = "intake.status"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sql = _Statements()

    def reserve(self, candidate: NewCase, attachment_ids: Sequence[UUID] = ()) -> Reservation:
        """Reserve ``candidate`` under its (client, idempotency key) and bind its attachments, or say why not."""
        # The objects keep their values after commit (all set here, none by the database): reloading them cost a
        # quarter of a submission's database time (make bench's profile).
        with Session(self.engine, expire_on_commit=False) as session:
            existing = session.exec(
                select(Case).where(Case.client_id == candidate.client_id,
                                   Case.idempotency_key == candidate.idempotency_key)
            ).first()
            if existing is not None:
                if existing.body_hash != candidate.body_hash:
                    return KeyReused()
                return InFlight() if existing.state == CaseState.PENDING else Replay(existing)
            session.add(Case(**candidate.row()))
            try:
                session.flush()
                if attachment_ids:
                    bound = session.exec(
                        update(Attachment)
                        .where(col(Attachment.attachment_id).in_(attachment_ids),
                               col(Attachment.client_id) == candidate.client_id, col(Attachment.case_id).is_(None))
                        .values(case_id=candidate.case_id)
                    )
                    if bound.rowcount != len(attachment_ids):
                        ours = set(session.exec(select(Attachment.attachment_id).where(
                            col(Attachment.case_id) == candidate.case_id)).all())
                        session.rollback()
                        return AttachmentsTaken(tuple(i for i, a in enumerate(attachment_ids) if a not in ours))
                session.commit()
            except IntegrityError:
                # The same key raced us to the unique index, or (once in 2^40) the reference collided.
                session.rollback()
                return InFlight()
            return Reserved(candidate)

    def accept(self, case_id: UUID) -> Case:
        """The broker acknowledged the submitted event: the case is accepted (idempotent).

        The stored event data is dropped: from now on the personal data lives downstream, not in intake's outbox.
        """
        with Session(self.engine, expire_on_commit=False) as session:
            case = session.get_one(Case, case_id, with_for_update=True)
            if case.state != CaseState.ACCEPTED:
                case.state = CaseState.ACCEPTED
                case.submission = None
                session.add(CaseHistory(case_id=case_id, status=CaseStatus.SUBMITTED, at=case.submitted_at))
                session.add(case)
                session.commit()
            return case

    def write_batch(self, candidates: Sequence[NewCase], acceptances: Sequence[NewCase]) -> list[Reservation]:
        """Reserve ``candidates`` (applications without attachments) and accept ``acceptances`` (cases whose event
        the broker acknowledged) in one transaction: the group commit of the submission path.

        Returns the candidates' outcomes in their order, each what :meth:`reserve` would have answered had they come
        one after the other; the accepted cases are updated in place, as :meth:`accept` leaves their rows. A
        batch hitting a unique index (the same key reserved meanwhile by another process, a colliding reference)
        is rolled back and done again one by one, so each request still gets its own verdict.
        """
        try:
            with self.engine.begin() as connection:
                outcomes = self._reserve_batch(connection, candidates)
                self._accept_batch(connection, acceptances)
        except IntegrityError:
            outcomes = [self.reserve(candidate) for candidate in candidates]
            for case in acceptances:
                self.accept(case.case_id)
        for case in acceptances:
            case.state = CaseState.ACCEPTED
            case.submission = None
        return outcomes

    def _reserve_batch(self, connection: Connection, candidates: Sequence[NewCase]) -> list[Reservation]:
        if not candidates:
            return []
        keys = {(candidate.client_id, candidate.idempotency_key) for candidate in candidates}
        rows = connection.execute(self._sql.lookup, {"clients": list({client for client, _ in keys}),
                                                     "keys": list({key for _, key in keys})})
        known: dict[tuple[UUID, str], Case | NewCase] = {
            pair: Case(**row._mapping) for row in rows if (pair := (row.client_id, row.idempotency_key)) in keys}
        outcomes: list[Reservation] = []
        new: list[NewCase] = []
        for candidate in candidates:
            key = (candidate.client_id, candidate.idempotency_key)
            existing = known.get(key)
            if existing is None:
                # A later request of this batch with the same key finds this one pending, as it would in the table.
                known[key] = candidate
                new.append(candidate)
                outcomes.append(Reserved(candidate))
            elif existing.body_hash != candidate.body_hash:
                outcomes.append(KeyReused())
            elif existing.state == CaseState.PENDING:
                outcomes.append(InFlight())
            else:
                assert isinstance(existing, Case)  # this batch's own candidates are all pending
                outcomes.append(Replay(existing))
        if new:
            connection.execute(self._sql.insert_cases, [case.row() for case in new])
        return outcomes

    def _accept_batch(self, connection: Connection, acceptances: Sequence[NewCase]) -> None:
        if not acceptances:
            return
        cases = {case.case_id: case for case in acceptances}
        changed = connection.execute(self._sql.accept, {"ids": list(cases)}).scalars().all()
        if changed:
            connection.execute(self._sql.insert_history, [
                {"case_id": case_id, "status": CaseStatus.SUBMITTED, "at": cases[case_id].submitted_at,
                 "detail": None} for case_id in changed
            ])

    def release(self, case_id: UUID) -> None:
        """Publishing failed: forget the reservation so the client's retry starts afresh."""
        with Session(self.engine) as session:
            case = session.get(Case, case_id)
            if case is not None and case.state == CaseState.PENDING:
                session.exec(
                    update(Attachment).where(col(Attachment.case_id) == case_id).values(case_id=None)
                )
                session.delete(case)
                session.commit()

    def pending_backlog(self) -> tuple[int, datetime | None]:
        """How many cases are pending (their submitted event not yet acknowledged), and since when the oldest."""
        with Session(self.engine) as session:
            count, oldest = session.exec(
                select(func.count(), func.min(Case.submitted_at)).where(Case.state == CaseState.PENDING)
            ).one()
            return int(count), oldest

    def pending_before(self, cutoff: datetime, limit: int = 100) -> list[Case]:
        """Cases still pending that were reserved before ``cutoff``: the outbox to publish again."""
        with Session(self.engine) as session:
            return list(session.exec(
                select(Case).where(Case.state == CaseState.PENDING, col(Case.submitted_at) < cutoff)
                .order_by(col(Case.submitted_at)).limit(limit)
            ).all())

    def get(self, case_id: UUID, client_id: UUID) -> CasePublic | None:
        """A case with its history, only for the client that submitted it."""
        with Session(self.engine) as session:
            case = session.get(Case, case_id)
            if case is None or case.client_id != client_id or case.state != CaseState.ACCEPTED:
                return None
            history = session.exec(
                select(CaseHistory).where(CaseHistory.case_id == case_id)
                .order_by(col(CaseHistory.at), col(CaseHistory.id))
            ).all()
            return CasePublic(
                case_id=case.case_id, reference=case.reference, leika_key=case.leika_key, status=case.status,
                submitted_at=case.submitted_at, updated_at=case.updated_at,
                history=[HistoryEntry(status=h.status, at=h.at, detail=h.detail) for h in history],
            )

    def owned_case(self, case_id: UUID, client_id: UUID) -> Case | None:
        """An accepted case of ``client_id``, or None (also for another client's case)."""
        with Session(self.engine) as session:
            case = session.get(Case, case_id)
            if case is None or case.client_id != client_id or case.state != CaseState.ACCEPTED:
                return None
            return case

    def record_status(
        self, event_id: str, case_id: UUID, status: CaseStatus, at: datetime, detail: str | None = None,
        destination_id: UUID | None = None,
    ) -> bool:
        """Apply a status event once; False if it was seen before or the case isn't intake's."""
        change = StatusChange(event_id, case_id, status, at, detail, destination_id)
        try:
            return bool(self.record_statuses([change]))
        except IntegrityError:
            # Recorded at the same moment by another request or by the consumer reading the event back.
            return False

    def record_statuses(self, changes: Sequence[StatusChange]) -> set[str]:
        """Apply a batch of status events in one transaction, each once and in order; returns the ids of those
        applied (not seen before, of one of intake's cases).

        A case's events travel on different topics (routed, unroutable, status), so they may be read out of order
        (a consumer restarting, one partition lagging): the latest event in time sets the status, an earlier one
        only joins the history. A case that ended stays ended: a withdrawal that overtook the routing decision is
        followed by the routed event (routing dispatches, then withdraws the case).
        """
        if not changes:
            return set()
        with self.engine.begin() as connection:
            # Claimed first: on SQLite the transaction starts with this write, so the cases read below are current.
            fresh = claim_batch(connection, self.CONSUMER, [change.event_id for change in changes])
            todo = [change for change in changes if change.event_id in fresh]
            if not todo:
                return set()
            rows = connection.execute(self._sql.statuses, {"ids": list({change.case_id for change in todo})})
            current = {row.case_id: [CaseStatus(row.status), row.updated_at, row.destination_id] for row in rows}
            applied: set[str] = set()
            entries: list[dict[str, object]] = []
            for change in todo:
                case = current.get(change.case_id)
                if case is None or change.event_id in applied:
                    continue
                applied.add(change.event_id)
                status, updated_at, _ = case
                # Intake accepted the withdrawal against its own copy of the status, which lagged behind routing's.
                refused = status == CaseStatus.WITHDRAWN and change.refuses_withdrawal
                if refused or (status not in ENDED_STATUSES and (change.status in ENDED_STATUSES
                                                                 or _utc(change.at) >= _utc(updated_at))):
                    case[0], case[1] = change.status, change.at
                if change.destination_id is not None:
                    case[2] = change.destination_id
                entries.append({"case_id": change.case_id, "status": change.status, "at": change.at,
                                "detail": change.detail})
            if entries:
                touched = {entry["case_id"] for entry in entries}
                connection.execute(
                    self._sql.set_status,
                    [{"b_case_id": case_id, "b_status": status, "b_updated_at": updated_at,
                      "b_destination_id": destination_id}
                     for case_id, (status, updated_at, destination_id) in current.items()
                     if case_id in touched],
                )
                connection.execute(self._sql.insert_history, entries)
            return applied

    def add_attachment(self, attachment: Attachment) -> None:
        """Record an uploaded attachment."""
        with Session(self.engine) as session:
            session.add(attachment)
            session.commit()

    def owned_attachments(self, attachment_ids: Sequence[UUID], client_id: UUID) -> dict[UUID, Attachment]:
        """Those of ``attachment_ids`` that exist and were uploaded by ``client_id``."""
        if not attachment_ids:
            return {}
        with Session(self.engine) as session:
            rows = session.exec(
                select(Attachment).where(col(Attachment.attachment_id).in_(attachment_ids),
                                         Attachment.client_id == client_id)
            ).all()
            return {row.attachment_id: row for row in rows}

    def attachment(self, attachment_id: UUID) -> tuple[Attachment, UUID | None] | None:
        """An attachment and the destination its case was dispatched to (if any)."""
        with Session(self.engine) as session:
            row = session.get(Attachment, attachment_id)
            if row is None:
                return None
            case = session.get(Case, row.case_id) if row.case_id is not None else None
            destination = case.destination_id if case is not None and case.state == CaseState.ACCEPTED else None
            return row, destination

    def unreferenced_before(self, cutoff: datetime, limit: int = 500) -> list[UUID]:
        """Attachments no application references that were uploaded before ``cutoff``."""
        with Session(self.engine) as session:
            return list(session.exec(
                select(Attachment.attachment_id)
                .where(col(Attachment.case_id).is_(None), col(Attachment.created_at) < cutoff).limit(limit)
            ).all())

    def forget_unreferenced(self, attachment_id: UUID) -> bool:
        """Delete the record of an attachment unless an application took it meanwhile; True if deleted."""
        with Session(self.engine) as session:
            result = session.exec(
                delete(Attachment).where(col(Attachment.attachment_id) == attachment_id,
                                         col(Attachment.case_id).is_(None))
            )
            session.commit()
            return bool(result.rowcount)

    def expired_cases(self, cutoff: datetime, limit: int = 100) -> list[UUID]:
        """Cases that ended before ``cutoff`` and still hold personal data: attachments, or a back office's message
        to the applicant in their history."""
        with Session(self.engine) as session:
            with_attachments = select(Attachment.case_id).where(col(Attachment.case_id).is_not(None))
            with_messages = select(CaseHistory.case_id).where(_MESSAGE)
            return list(session.exec(
                select(Case.case_id)
                .where(col(Case.status).in_(ENDED_STATUSES), col(Case.updated_at) <= cutoff,
                       col(Case.case_id).in_(with_attachments) | col(Case.case_id).in_(with_messages))
                .limit(limit)
            ).all())

    def case_attachments(self, case_id: UUID) -> list[UUID]:
        """The attachments of a case."""
        with Session(self.engine) as session:
            return list(session.exec(select(Attachment.attachment_id).where(Attachment.case_id == case_id)).all())

    def erase(self, case_id: UUID, now: datetime) -> list[str]:
        """Delete the case's attachment records and the messages in its history, and record the deletion for
        publishing, in one transaction; returns the categories deleted. The blobs must be gone already."""
        with Session(self.engine) as session:
            attachments = session.exec(delete(Attachment).where(col(Attachment.case_id) == case_id))
            messages = session.exec(update(CaseHistory).where(col(CaseHistory.case_id) == case_id, _MESSAGE)
                                    .values(detail=None))
            categories = [name for name, count in (("attachments", attachments.rowcount),
                                                   ("messages", messages.rowcount)) if count]
            if categories:
                record_deletion(session, case_id, categories, now)
            session.commit()
            return categories

