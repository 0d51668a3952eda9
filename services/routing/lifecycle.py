"""The case status model of SPEC §4 as data: which status a back office may report next, and withdrawal; the
``status-changed`` event routing publishes for a change."""

from __future__ import annotations

from types import MappingProxyType

from shared import events
from shared.envelope import OutgoingEvent, build_event
from shared.events import CaseStatus, CaseStatusChanged

SOURCE = "/ozg/routing"

S = CaseStatus

# What the destination (back office) may report next, by current status. Any other transition is refused (409).
TRANSITIONS: MappingProxyType[CaseStatus, frozenset[CaseStatus]] = MappingProxyType({
    S.ROUTED: frozenset({S.RECEIVED, S.REJECTED}),
    S.RECEIVED: frozenset({S.IN_PROGRESS}),
    S.IN_PROGRESS: frozenset({S.INFORMATION_REQUESTED, S.DECIDED}),
    S.INFORMATION_REQUESTED: frozenset({S.IN_PROGRESS}),
    S.DECIDED: frozenset({S.CLOSED}),
})

# The applicant may withdraw (through the portal; intake publishes it) from any of these states.
WITHDRAWABLE: frozenset[CaseStatus] = frozenset({
    S.SUBMITTED, S.ROUTED, S.UNROUTABLE, S.RECEIVED, S.IN_PROGRESS, S.INFORMATION_REQUESTED,
})

# What a destination must send along with a status.
NEEDS_MESSAGE: frozenset[CaseStatus] = frozenset({S.INFORMATION_REQUESTED, S.DECIDED})
NEEDS_OUTCOME: frozenset[CaseStatus] = frozenset({S.DECIDED})
NEEDS_PROBLEMS: frozenset[CaseStatus] = frozenset({S.REJECTED})

# The statuses a destination reports at all (the targets of TRANSITIONS).
REPORTABLE: frozenset[CaseStatus] = frozenset().union(*TRANSITIONS.values())


def allowed_next(current: CaseStatus) -> list[CaseStatus]:
    """The statuses a destination may report for a case in ``current``, in the order of the model."""
    targets = TRANSITIONS.get(current, frozenset())
    return [status for status in CaseStatus if status in targets]


def may_report(current: CaseStatus, new: CaseStatus) -> bool:
    """Whether a destination may move a case from ``current`` to ``new``."""
    return new in TRANSITIONS.get(current, frozenset())


def may_withdraw(current: CaseStatus) -> bool:
    """Whether the applicant may still withdraw a case in ``current`` (before ``decided``)."""
    return current in WITHDRAWABLE


def status_event(data: CaseStatusChanged, event_id: str | None = None) -> OutgoingEvent:
    """A ``de.ozg.case.status-changed.v1`` event published by routing."""
    return build_event(event_type=events.STATUS_CHANGED_V1, source=SOURCE, subject=str(data.case_id),
                       data=data, time=data.changed_at, event_id=event_id)
