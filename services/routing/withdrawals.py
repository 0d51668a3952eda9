"""The applicant's withdrawal (SPEC §4) as routing applies it.

Intake publishes a withdrawal on ``ozg.cases.status``. Routing applies it in one transaction with the record that
it did (idempotent consumer), the copy for the destination's topic (outbox) and the push to its webhook, so none of
them can be lost or done twice. A withdrawal that arrives before routing has routed the case (the events travel on
different topics) is kept and applied as soon as the case is routed: the destination then gets the withdrawal
after the dispatched event. A case waiting in clearing leaves it (its kept application is deleted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple
from uuid import UUID

from sqlalchemy import Connection, Engine, delete, select, update
from sqlmodel import Session, col

from services.routing.lifecycle import may_withdraw, status_event
from services.routing.models import ClearingCase, Destination, EarlyWithdrawal, RoutedCase
from services.routing.webhooks import delivery_for
from shared import events, topics
from shared.db import table_of
from shared.envelope import OutgoingEvent, derived_event_id
from shared.events import CaseStatus, CaseStatusChanged
from shared.idempotency import first_delivery
from shared.outbox import stage

log = logging.getLogger(__name__)

FORWARD = "forward"
REFUSED = "refused"

# The tables, for the dispatcher's per-batch look-up in SQLAlchemy Core.
_EARLY, _CASES = table_of(EarlyWithdrawal), table_of(RoutedCase)


class Withdrawn(StrEnum):
    """What became of a withdrawal event."""

    APPLIED = "applied"
    EARLY = "early"  # the case is not routed yet: kept
    TOO_LATE = "too_late"  # decided, closed or rejected: the case stays as it is, and the refusal is published
    ALREADY = "already"  # withdrawn before
    DUPLICATE = "duplicate"  # this event was processed before


class KeptWithdrawal(NamedTuple):
    """A withdrawal kept until its case is routed."""

    case_id: UUID
    event_id: str
    change: dict[str, Any]


class ConcurrentChange(RuntimeError):
    """The case changed between reading and writing it; the withdrawal is retried on the new status."""


def forwarded_withdrawal(cause_id: str, withdrawal: CaseStatusChanged, case: RoutedCase,
                         previous: CaseStatus) -> OutgoingEvent:
    """The copy of a withdrawal for the destination's topic, with a deterministic id derived from the original."""
    data = withdrawal.model_copy(update={
        "destination_id": case.destination_id, "leika_key": withdrawal.leika_key or case.leika_key,
        "previous_status": previous,
    })
    return status_event(data, derived_event_id(cause_id, events.STATUS_CHANGED_V1, FORWARD))


def refused_withdrawal(cause_id: str, case: RoutedCase, current: CaseStatus) -> OutgoingEvent:
    """The answer to a withdrawal that came too late, on ``ozg.cases.status``: the case's status as it stays, with
    ``previous_status: withdrawn``. Intake checked the withdrawal against its own copy of the status, which may lag
    behind a decision; this event corrects intake's copy and tells notify to let the applicant know."""
    data = CaseStatusChanged(case_id=case.case_id, reference=case.reference, status=current,
                             previous_status=CaseStatus.WITHDRAWN, leika_key=case.leika_key,
                             destination_id=case.destination_id, changed_at=datetime.now(UTC))
    return status_event(data, derived_event_id(cause_id, events.STATUS_CHANGED_V1, REFUSED))


class WithdrawalStore:
    """Applying withdrawals; synchronous, called through a worker thread."""

    # The consumer name of the processed-event records (unchanged from before the outbox).
    CONSUMER = "routing.status"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def receive(self, event_id: str, change: CaseStatusChanged) -> Withdrawn:
        """Take a withdrawal event into effect once: apply it, or keep it until the case is routed."""
        with Session(self.engine) as session:
            if not first_delivery(session, self.CONSUMER, event_id):
                return Withdrawn.DUPLICATE
            case = session.get(RoutedCase, change.case_id, with_for_update=True)
            if case is None:
                session.merge(EarlyWithdrawal(case_id=change.case_id, event_id=event_id,
                                              change=change.model_dump(mode="json")))
                outcome = Withdrawn.EARLY
            else:
                outcome = _apply(session, case, event_id, change)
            session.commit()
            return outcome

    def apply_early(self, case_ids: Sequence[UUID] | None = None, limit: int = 500) -> list[UUID]:
        """Apply the kept withdrawals whose case routing knows by now (only of ``case_ids``, if given); returns
        the cases withdrawn.

        The dispatcher, the status consumer and the outbox sweep all call this; whoever deletes the kept row
        applies it, in the same transaction, so each is applied exactly once.
        """
        with self.engine.connect() as connection:
            kept = self.kept(connection, case_ids, limit)
        return self.apply_kept(kept)

    def kept(self, connection: Connection, case_ids: Sequence[UUID] | None = None,
             limit: int = 500) -> list[KeptWithdrawal]:
        """The kept withdrawals whose case routing knows (only of ``case_ids``, if given), oldest first, as
        ``connection`` sees them: the dispatcher asks inside the transaction that records its batch."""
        # Core, not ORM: the dispatcher asks once per batch and nearly always finds nothing, and an ORM query's
        # per-call set-up cost more than routing's own recording of the batch.
        query = select(_EARLY.c.case_id, _EARLY.c.event_id, _EARLY.c.change).join(
            _CASES, _CASES.c.case_id == _EARLY.c.case_id)
        if case_ids is not None:
            if not case_ids:
                return []
            query = query.where(_EARLY.c.case_id.in_(list(case_ids)))
        rows = connection.execute(query.order_by(_EARLY.c.received_at).limit(limit))
        return [KeptWithdrawal(*row) for row in rows]

    def apply_kept(self, kept: Sequence[KeptWithdrawal]) -> list[UUID]:
        """Apply withdrawals found by kept(), each in its own transaction (so only once the transaction kept() ran
        in has committed); returns the cases withdrawn."""
        applied: list[UUID] = []
        for row in kept:
            with Session(self.engine) as session:
                taken = session.exec(delete(EarlyWithdrawal).where(col(EarlyWithdrawal.case_id) == row.case_id))
                case = session.get(RoutedCase, row.case_id, with_for_update=True)
                if taken.rowcount != 1 or case is None:
                    continue
                change = CaseStatusChanged.model_validate(row.change)
                if _apply(session, case, row.event_id, change) == Withdrawn.APPLIED:
                    applied.append(row.case_id)
                session.commit()
        return applied


def _apply(session: Session, case: RoutedCase, cause_id: str, change: CaseStatusChanged) -> Withdrawn:
    """Withdraw ``case`` inside ``session``'s transaction; stage the destination's copy (topic and webhook)."""
    previous = CaseStatus(case.status)  # loaded from the database as a plain string
    if previous == CaseStatus.WITHDRAWN:
        return Withdrawn.ALREADY
    if not may_withdraw(previous):
        log.warning("withdrawal too late, refused", extra={"case_id": str(case.case_id), "status": previous.value})
        stage(session, topics.CASE_STATUS, refused_withdrawal(cause_id, case, previous))
        return Withdrawn.TOO_LATE
    moved = session.exec(update(RoutedCase).where(
        col(RoutedCase.case_id) == case.case_id, col(RoutedCase.status) == str(previous),
    ).values(status=str(CaseStatus.WITHDRAWN), updated_at=datetime.now(UTC)))
    if moved.rowcount != 1:
        # A destination's report won the compare-and-set: the event is redelivered and decided on the new status.
        raise ConcurrentChange("case changed concurrently; retrying the withdrawal")
    waiting = session.get(ClearingCase, case.case_id)
    if waiting is not None:
        session.delete(waiting)  # the kept application (personal data) is no longer needed
    if case.destination_id is not None:
        forward = forwarded_withdrawal(cause_id, change, case, previous)
        stage(session, topics.destination_topic(case.destination_id), forward)
        destination = session.get(Destination, case.destination_id)
        if destination is not None and destination.webhook_url:
            session.merge(delivery_for(destination, forward, case.case_id))
    return Withdrawn.APPLIED
