"""Notify's database operations; synchronous, called from async code through a worker thread.

The operations every event goes through (contact lookup, claim, attempt, outcome) are SQLAlchemy Core statements
on a connection: an ORM session, identity map and flush per call cost several times the database work itself.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine, Row, Table, bindparam, delete, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.notify.messages import Message
from services.notify.models import (
    FINAL_STATUSES,
    Contact,
    Notification,
    NotificationPublic,
    NotificationStatus,
    ParkedEvent,
)
from shared.db import table_of
from shared.envelope import derived_event_id
from shared.events import ReplyChannel
from shared.idempotency import ProcessedEvent, first_delivery
from shared.retention import record_deletion, was_deleted

OPEN_STATUSES = (NotificationStatus.PENDING, NotificationStatus.SENDING)

# The tables, for SQLAlchemy Core statements.
CONTACTS, NOTIFICATIONS = table_of(Contact), table_of(Notification)
PROCESSED, PARKED = table_of(ProcessedEvent), table_of(ParkedEvent)

# The hot path's statements, built once with bound parameters: SQLAlchemy then finds their compiled form by a
# memoized cache key, where a statement built per call with its values inline costs more than running it.
_PROCESSED = core_select(PROCESSED.c.event_id).where(
    PROCESSED.c.consumer == bindparam("w_consumer"), PROCESSED.c.event_id == bindparam("w_event_id"))
_CONTACT = core_select(CONTACTS).where(CONTACTS.c.case_id == bindparam("w_case_id"))
_NOTIFICATION = core_select(NOTIFICATIONS).where(NOTIFICATIONS.c.notification_id == bindparam("w_id"))
_CAUSED_BY = core_select(NOTIFICATIONS).where(NOTIFICATIONS.c.trigger_event_id == bindparam("w_event_id"))
_PARKED = (core_select(PARKED).where(PARKED.c.case_id == bindparam("w_case_id"))
           .order_by(PARKED.c.parked_at))
# Updates set the columns named in their parameters (besides the w_* ones of the WHERE clause).
_UPDATE_CONTACT = update(CONTACTS).where(CONTACTS.c.case_id == bindparam("w_case_id"))
_UPDATE_NOTIFICATION = update(NOTIFICATIONS).where(NOTIFICATIONS.c.notification_id == bindparam("w_id"))
_START_ATTEMPT = (
    _UPDATE_NOTIFICATION
    .where(NOTIFICATIONS.c.status == NotificationStatus.PENDING,
           NOTIFICATIONS.c.next_attempt_at <= bindparam("w_now"))
    .values(status=NotificationStatus.SENDING, attempts=NOTIFICATIONS.c.attempts + 1)
    .returning(*NOTIFICATIONS.c)
)
# An attempt that outlived its lease: the process died during it (``w_now``: the time of the check).
_LAPSED = (NOTIFICATIONS.c.status == NotificationStatus.SENDING) & (
    NOTIFICATIONS.c.next_attempt_at <= bindparam("w_now"))
_RECORD_ATTEMPT = (
    _UPDATE_NOTIFICATION.where(NOTIFICATIONS.c.status == NotificationStatus.SENDING).returning(*NOTIFICATIONS.c)
)


# The error a retried interrupted attempt leaves on its row until the repeat's outcome replaces it.
INTERRUPTED_ATTEMPT = "attempt interrupted (the process stopped during it); made again"


class UnknownContactError(Exception):
    """An event for a case whose submitted event notify has not processed (yet); the handler parks it."""


@dataclass(frozen=True)
class Claimed:
    """The event is new: its notification was recorded as pending (due at once) and must now be delivered."""

    notification: Notification
    contact: Contact


@dataclass(frozen=True)
class Seen:
    """The event was processed before; these are the notifications it caused."""

    notifications: list[Notification]


@dataclass(frozen=True)
class Attempt:
    """A notification this process now holds for one attempt, with its message and the contact to send to."""

    notification: Notification
    contact: Contact | None
    message: Message | None


def notification_id(trigger_event_id: str) -> UUID:
    """The deterministic id of the notification an event causes, so a redelivery maps onto the same row."""
    return UUID(derived_event_id(trigger_event_id, "notification"))


class NotifyStore:
    """Contacts of applicants, notifications and their retry schedule, deletions, and processed events."""

    CONSUMER = "notify.notifications"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        # Rows are handed to async code after the session closed; expired attributes could not load there.
        return Session(self.engine, expire_on_commit=False)

    def contact(self, case_id: UUID) -> Contact | None:
        """The contact of a case, or None if its submitted event hasn't been seen (or it was deleted)."""
        with self.engine.connect() as connection:
            return _contact_of(connection, case_id)

    def processed(self, event_id: str) -> bool:
        """Whether notify's consumer has processed ``event_id`` before."""
        with self.engine.connect() as connection:
            return _processed(connection, self.CONSUMER, event_id)

    def pass_over(self, event_id: str) -> bool:
        """Record ``event_id`` as processed without a message; False if it was processed before (idempotent)."""
        with self._session() as session:
            first = first_delivery(session, self.CONSUMER, event_id)
            session.commit()
            return first

    def notification(self, notification_id: UUID) -> Notification | None:
        """One notification."""
        with self._session() as session:
            return session.get(Notification, notification_id)

    def claim(
        self,
        *,
        event_id: str,
        event_type: str,
        case_id: UUID,
        message: Message,
        now: datetime,
        new_contact: Contact | None = None,
        authority_name: str | None = None,
        ended: bool = False,
        reopened: bool = False,
    ) -> Claimed | Seen:
        """Record, in one transaction, that ``event_id`` is processed and that its notification is due now.

        ``new_contact`` (from a submitted event) is stored first; ``authority_name`` (from a routed event) is
        remembered on the contact for later messages; ``ended`` (the case closed, was withdrawn or rejected)
        starts the retention clock, ``reopened`` (a withdrawal refused, the case goes on) stops it again.
        Raises :class:`UnknownContactError` when the case has no contact.
        """
        with self.engine.connect() as connection:
            if _processed(connection, self.CONSUMER, event_id):
                return Seen(_caused_by(connection, event_id))
            try:
                connection.execute(insert(PROCESSED), {"consumer": self.CONSUMER, "event_id": event_id,
                                                       "processed_at": datetime.now(UTC)})
                stored = _contact_of(connection, case_id)
                contact = stored or new_contact
                if contact is None:
                    raise UnknownContactError(f"no contact for case {case_id}")
                changes: dict[str, Any] = {}
                if authority_name is not None:
                    changes["authority_name"] = authority_name
                if ended and contact.ended_at is None:
                    changes["ended_at"] = now
                elif reopened and not ended and contact.ended_at is not None:
                    changes["ended_at"] = None
                for name, value in changes.items():
                    setattr(contact, name, value)
                if stored is None:
                    connection.execute(insert(CONTACTS), _values(contact, CONTACTS))
                elif changes:
                    connection.execute(_UPDATE_CONTACT, {"w_case_id": case_id, **changes})
                notification = Notification(
                    notification_id=notification_id(event_id),
                    case_id=case_id,
                    channel=contact.reply_channel,
                    trigger_event_id=event_id,
                    trigger_type=event_type,
                    status=NotificationStatus.PENDING,
                    created_at=now,
                    next_attempt_at=now,
                    subject=message.subject,
                    body=message.body,
                    language=message.language,
                )
                connection.execute(insert(NOTIFICATIONS), _values(notification, NOTIFICATIONS))
                connection.commit()
            except IntegrityError:
                # A concurrent delivery of the same event committed first; it owns the delivery.
                connection.rollback()
                return Seen(_caused_by(connection, event_id))
            return Claimed(notification=notification, contact=contact)

    def start_attempt(self, notification_id: UUID, *, now: datetime, lease_until: datetime) -> Attempt | None:
        """Take a due notification for one attempt (None if it isn't due, or another worker took it).

        The conditional update lets exactly one of several workers (replicas, the consumer and the scheduler)
        win; the lease marks the attempt as under way, so a crash during it is noticed later.
        """
        with self.engine.connect() as connection:
            row = connection.execute(_START_ATTEMPT, {"w_id": notification_id, "w_now": now,
                                                      "next_attempt_at": lease_until, "last_attempt_at": now}).first()
            connection.commit()
            if row is None:
                return None
            notification = _notification_of(row)
            message = None
            if notification.subject is not None and notification.body is not None:
                message = Message(subject=notification.subject, body=notification.body,
                                  language=notification.language or "de")
            return Attempt(notification, _contact_of(connection, notification.case_id), message)

    def record_attempt(
        self,
        notification_id: UUID,
        *,
        status: NotificationStatus,
        now: datetime,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Notification:
        """Record an attempt's result: final (sent or failed) or pending again until ``next_attempt_at``.

        Only a notification still held by the attempt changes; a final one (a lapsed lease already reported)
        is returned as it is.
        """
        changes = _outcome(status=status, now=now, error=error, next_attempt_at=next_attempt_at)
        with self.engine.connect() as connection:
            # The conditional update is the check and the change in one statement, as a row lock would make them.
            row = connection.execute(_RECORD_ATTEMPT, {"w_id": notification_id, **changes}).first()
            if row is None:
                row = connection.execute(_NOTIFICATION, {"w_id": notification_id}).one()
            connection.commit()
            return _notification_of(row)

    def fail_unsent(self, notification_id: UUID, *, now: datetime, error: str) -> Notification | None:
        """Fail a notification that is pending or whose attempt lapsed, without an attempt; None if it moved on."""
        with self._session() as session:
            notification = session.get_one(Notification, notification_id, with_for_update=True)
            lapsed = notification.status == NotificationStatus.SENDING and (
                notification.next_attempt_at is None or notification.next_attempt_at <= now
            )
            if not (lapsed or notification.status == NotificationStatus.PENDING):
                return None
            for name, value in _outcome(status=NotificationStatus.FAILED, now=now, error=error).items():
                setattr(notification, name, value)
            session.add(notification)
            session.commit()
            return notification

    def retry_lapsed(self, notification_id: UUID, *, now: datetime) -> bool:
        """Make a notification whose attempt lapsed due again at once (its channel recognises a repeat); False if it
        moved on meanwhile (its attempt finished late, or another worker took it)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                _UPDATE_NOTIFICATION.where(_LAPSED)
                .values(status=NotificationStatus.PENDING, next_attempt_at=now, error=INTERRUPTED_ATTEMPT)
                .returning(NOTIFICATIONS.c.notification_id),
                {"w_id": notification_id, "w_now": now},
            ).first()
            connection.commit()
            return row is not None

    def mark_published(self, notification_id: UUID, now: datetime) -> None:
        """Note that the final outcome is on ``ozg.notifications``."""
        with self.engine.connect() as connection:
            connection.execute(_UPDATE_NOTIFICATION, {"w_id": notification_id, "outcome_published_at": now})
            connection.commit()

    def due(self, now: datetime, limit: int = 100) -> list[UUID]:
        """Pending notifications whose next attempt is due, the longest-waiting first."""
        with self._session() as session:
            return list(
                session.exec(
                    select(Notification.notification_id)
                    .where(Notification.status == NotificationStatus.PENDING, col(Notification.next_attempt_at) <= now)
                    .order_by(col(Notification.next_attempt_at))
                    .limit(limit)
                ).all()
            )

    def lapsed(self, now: datetime, limit: int = 100) -> list[tuple[UUID, ReplyChannel]]:
        """Notifications whose attempt outlived its lease (the process died during it), with their channel."""
        query = core_select(NOTIFICATIONS.c.notification_id, NOTIFICATIONS.c.channel).where(_LAPSED).limit(limit)
        with self.engine.connect() as connection:
            return [(notification_id, ReplyChannel(channel))
                    for notification_id, channel in connection.execute(query, {"w_now": now})]

    def unpublished(self, before: datetime, limit: int = 100) -> list[Notification]:
        """Final notifications whose outcome was not published (a crash or broker outage after recording it)."""
        with self._session() as session:
            return list(
                session.exec(
                    select(Notification)
                    .where(
                        col(Notification.status).in_(FINAL_STATUSES),
                        col(Notification.outcome_published_at).is_(None),
                        col(Notification.last_attempt_at) <= before,
                    )
                    .limit(limit)
                ).all()
            )

    def expired_contacts(self, cutoff: datetime, limit: int = 100) -> list[tuple[UUID, str]]:
        """Cases (id and reference) that ended before ``cutoff`` and have no message still on its way: their
        contacts are due."""
        with self._session() as session:
            still_open = select(Notification.case_id).where(col(Notification.status).in_(OPEN_STATUSES))
            return [
                (case_id, reference) for case_id, reference in session.exec(
                    select(Contact.case_id, Contact.reference)
                    .where(col(Contact.ended_at) <= cutoff, col(Contact.case_id).not_in(still_open))
                    .limit(limit)
                ).all()
            ]

    def delete_contact(self, case_id: UUID, now: datetime, also_deleted: Sequence[str] = ()) -> None:
        """Delete a case's contact data, and any event still parked for it (a message to the applicant may be in
        it), and record the deletion (with ``also_deleted``, the categories deleted elsewhere just before) for
        publishing, in one transaction."""
        with self._session() as session:
            contact = session.get(Contact, case_id)
            if contact is None:
                return
            record_deletion(session, case_id, [*contact.categories(), *also_deleted], now)
            session.delete(contact)
            session.execute(delete(PARKED).where(PARKED.c.case_id == case_id))
            session.commit()

    def drop_parked(self, cutoff: datetime, now: datetime) -> int:
        """Delete the events parked before ``cutoff``, whose case's submitted event never came (dead-lettered, say);
        each case whose parked events held a message to the applicant gets a deletion to publish. Returns how many
        events were deleted."""
        with self._session() as session:
            stale = session.exec(select(ParkedEvent).where(col(ParkedEvent.parked_at) <= cutoff)).all()
            cases = {event.case_id for event in stale if json.loads(event.data).get("message") is not None}
            for case_id in cases:
                if not was_deleted(session, case_id):
                    record_deletion(session, case_id, ["message"], now)
            for event in stale:
                session.delete(event)
            session.commit()
            return len(stale)

    def pass_over_deleted(self, case_id: UUID, event_id: str) -> bool:
        """If the case's personal data was deleted after its retention, record ``event_id`` as processed without a
        message and return True; otherwise change nothing and return False."""
        with self._session() as session:
            if not was_deleted(session, case_id):
                return False
            first_delivery(session, self.CONSUMER, event_id)
            session.commit()
            return True

    def for_case(self, case_id: UUID) -> list[NotificationPublic] | None:
        """A case's notifications, oldest first; None if notify knows nothing of the case."""
        with self._session() as session:
            rows = session.exec(
                select(Notification)
                .where(Notification.case_id == case_id)
                .order_by(col(Notification.created_at), col(Notification.notification_id))
            ).all()
            if not rows and session.get(Contact, case_id) is None:
                return None
            return [NotificationPublic.model_validate(row, from_attributes=True) for row in rows]

    def park(self, event: ParkedEvent) -> None:
        """Keep an event until its case's contact is known (a repeated park of the same event is a no-op)."""
        with self._session() as session:
            if session.get(ParkedEvent, event.event_id) is None:
                session.add(event)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()

    def parked(self, case_id: UUID) -> list[ParkedEvent]:
        """The events parked for a case, in the order they arrived."""
        # Asked after every receipt and almost always empty: a Core query, no session.
        with self.engine.connect() as connection:
            return [ParkedEvent(**row._mapping) for row in connection.execute(_PARKED, {"w_case_id": case_id})]

    def stranded_parked(self, before: datetime, limit: int = 100) -> list[UUID]:
        """Cases with events parked before ``before`` although their contact is known: the look at the parked
        events that follows a receipt missed them (another replica parked one just after it, or the process stopped
        before unparking)."""
        with self.engine.connect() as connection:
            return list(connection.scalars(
                core_select(PARKED.c.case_id).distinct()
                .where(PARKED.c.parked_at <= before, PARKED.c.case_id.in_(core_select(CONTACTS.c.case_id)))
                .limit(limit)
            ))

    def unpark(self, event_id: str) -> None:
        """Forget a parked event once it has been handled."""
        with self._session() as session:
            event = session.get(ParkedEvent, event_id)
            if event is not None:
                session.delete(event)
                session.commit()


def _outcome(
    *, status: NotificationStatus, now: datetime, error: str | None, next_attempt_at: datetime | None = None
) -> dict[str, Any]:
    """The columns an attempt's result sets: final (sent or failed) or pending again until ``next_attempt_at``."""
    changes: dict[str, Any] = {"status": status, "error": error[:500] if error else None, "last_attempt_at": now}
    if status in FINAL_STATUSES:
        changes |= {
            "next_attempt_at": None,
            "sent_at": now if status == NotificationStatus.SENT else None,
            # The text names the applicant; once it can't be sent any more, it goes.
            "subject": None, "body": None, "language": None,
        }
    else:
        changes["next_attempt_at"] = next_attempt_at
    return changes


def _values(row: Contact | Notification, table: Table) -> dict[str, Any]:
    """A model's columns, for an insert."""
    return {column.name: getattr(row, column.name) for column in table.columns}


def _notification_of(row: Row[Any]) -> Notification:
    return Notification(**row._mapping)


def _processed(connection: Connection, consumer: str, event_id: str) -> bool:
    return connection.execute(_PROCESSED, {"w_consumer": consumer, "w_event_id": event_id}).first() is not None


def _contact_of(connection: Connection, case_id: UUID) -> Contact | None:
    row = connection.execute(_CONTACT, {"w_case_id": case_id}).first()
    return None if row is None else Contact(**row._mapping)


def _caused_by(connection: Connection, event_id: str) -> list[Notification]:
    rows = connection.execute(_CAUSED_BY, {"w_event_id": event_id})
    return [_notification_of(row) for row in rows]
