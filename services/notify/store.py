"""Notify's database operations; synchronous, called from async code through a worker thread."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from services.notify.models import Contact, Notification, NotificationPublic, NotificationStatus
from shared.envelope import derived_event_id
from shared.idempotency import first_delivery


class UnknownContactError(Exception):
    """An event for a case whose submitted event notify has not processed (yet).

    Raised, not swallowed: the dead-letter middleware retries it with back-off (another replica may be handling
    the submitted event right now) and then parks it on the dead-letter topic, from where it can be replayed.
    """


@dataclass(frozen=True)
class Claimed:
    """The event is new: its notification was recorded as pending and must now be delivered."""

    notification: Notification
    contact: Contact


@dataclass(frozen=True)
class Seen:
    """The event was processed before; these are the notifications it caused."""

    notifications: list[Notification]


def notification_id(trigger_event_id: str) -> UUID:
    """The deterministic id of the notification an event causes, so a redelivery maps onto the same row."""
    return UUID(derived_event_id(trigger_event_id, "notification"))


class NotifyStore:
    """Contacts of applicants, notifications and the processed events of notify's consumer."""

    CONSUMER = "notify.notifications"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _session(self) -> Session:
        # Rows are handed to async code after the session closed; expired attributes could not load there.
        return Session(self.engine, expire_on_commit=False)

    def contact(self, case_id: UUID) -> Contact | None:
        """The contact of a case, or None if its submitted event hasn't been seen."""
        with self._session() as session:
            return session.get(Contact, case_id)

    def claim(
        self,
        *,
        event_id: str,
        event_type: str,
        case_id: UUID,
        new_contact: Contact | None = None,
        authority_name: str | None = None,
    ) -> Claimed | Seen:
        """Record, in one transaction, that ``event_id`` is processed and that its notification is pending.

        ``new_contact`` (from a submitted event) is stored first; ``authority_name`` (from a routed event) is
        remembered on the contact for later messages. Raises :class:`UnknownContactError` when the case has no
        contact.
        """
        with self._session() as session:
            if not first_delivery(session, self.CONSUMER, event_id):
                return Seen(self._caused_by(session, event_id))
            contact = session.get(Contact, case_id)
            if contact is None and new_contact is not None:
                contact = new_contact
            if contact is None:
                raise UnknownContactError(f"no contact for case {case_id}")
            if authority_name is not None:
                contact.authority_name = authority_name
            session.add(contact)
            notification = Notification(
                notification_id=notification_id(event_id),
                case_id=case_id,
                channel=contact.reply_channel,
                trigger_event_id=event_id,
                trigger_type=event_type,
            )
            session.add(notification)
            try:
                session.commit()
            except IntegrityError:
                # A concurrent delivery of the same event committed first; it owns the delivery.
                session.rollback()
                return Seen(self._caused_by(session, event_id))
            return Claimed(notification=notification, contact=contact)

    def finish(
        self, notification_id: UUID, status: NotificationStatus, attempts: int, error: str | None = None
    ) -> Notification:
        """Record the outcome of a delivery."""
        with self._session() as session:
            notification = session.get_one(Notification, notification_id)
            notification.status = status
            notification.attempts = attempts
            notification.error = error[:500] if error else None
            notification.sent_at = datetime.now(UTC) if status is NotificationStatus.SENT else None
            session.add(notification)
            session.commit()
            return notification

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

    @staticmethod
    def _caused_by(session: Session, event_id: str) -> list[Notification]:
        return list(session.exec(select(Notification).where(Notification.trigger_event_id == event_id)).all())
