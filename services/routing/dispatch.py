"""Dispatch: turn a submitted application into a routed + dispatched pair of events, or an unroutable one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.routing.competence import NoCompetenceRule, competent_authority
from services.routing.directory import AmbiguousPostalCode, Directory, UnknownRegion
from services.routing.models import Destination, RoutedCase
from shared import events, topics
from shared.envelope import OutgoingEvent, build_event, derived_event_id
from shared.events import (
    ApplicationDispatched,
    ApplicationRouted,
    ApplicationSubmitted,
    ApplicationUnroutable,
    CaseStatus,
    ResolvedRegion,
    UnroutableReason,
)

SOURCE = "/ozg/routing"

# (authority ARS, LeiKa key) -> the destinations serving that service there, preferred first.
DestinationLookup = Callable[[str, str], list[Destination]]


@dataclass(frozen=True)
class Outcome:
    """The events to publish for one application and the record to keep of it."""

    publish: list[tuple[str, OutgoingEvent]]
    case: RoutedCase


def _region(gemeinde_ars: str, gemeinde_ags: str, name: str) -> ResolvedRegion:
    return ResolvedRegion(ars=gemeinde_ars, ags=gemeinde_ags, name=name)


def unroutable(
    cause_id: str, application: ApplicationSubmitted, reason: UnroutableReason, detail: str,
    candidates: list[ResolvedRegion] | None = None,
) -> Outcome:
    """The case goes to clearing."""
    data = ApplicationUnroutable(
        case_id=application.case_id, reference=application.reference, leika_key=application.leika_key,
        reason=reason, detail=detail, candidates=candidates or [],
    )
    event = build_event(event_type=events.UNROUTABLE_V1, source=SOURCE, subject=str(application.case_id),
                        data=data, event_id=derived_event_id(cause_id, events.UNROUTABLE_V1))
    case = RoutedCase(case_id=application.case_id, reference=application.reference,
                      leika_key=application.leika_key, status=CaseStatus.UNROUTABLE, reason=reason)
    return Outcome([(topics.UNROUTABLE, event)], case)


def decide(
    cause_id: str,
    application: ApplicationSubmitted,
    directory: Directory,
    destinations_for: DestinationLookup,
) -> Outcome:
    """Route one application; ``cause_id`` (the submitted event's id) makes the output ids deterministic."""
    try:
        gemeinde = directory.resolve(application.region)
    except UnknownRegion as exc:
        return unroutable(cause_id, application, UnroutableReason.UNKNOWN_REGION, str(exc))
    except AmbiguousPostalCode as exc:
        candidates = [_region(g.ars, g.ags, g.name) for g in exc.candidates]
        return unroutable(cause_id, application, UnroutableReason.AMBIGUOUS_POSTAL_CODE, str(exc), candidates)
    try:
        decision = competent_authority(directory, gemeinde, application.leika_key)
    except NoCompetenceRule as exc:
        return unroutable(cause_id, application, UnroutableReason.NO_COMPETENCE_RULE, str(exc))
    matches = destinations_for(decision.authority.ars, application.leika_key)
    if not matches:
        return unroutable(cause_id, application, UnroutableReason.NO_DESTINATION,
                          f"no destination registered for {decision.authority.name} ({decision.authority.ars})")
    destination = matches[0]
    routed = ApplicationRouted(
        case_id=application.case_id, reference=application.reference, leika_key=application.leika_key,
        region=_region(gemeinde.ars, gemeinde.ags, gemeinde.name), authority=decision.authority,
        rule=decision.rule, destination_id=destination.destination_id, destination_name=destination.name,
    )
    dispatched = ApplicationDispatched(case_id=application.case_id, reference=application.reference,
                                       destination_id=destination.destination_id, routing=routed,
                                       application=application)
    subject = str(application.case_id)

    def event(event_type: str, data: ApplicationRouted | ApplicationDispatched) -> OutgoingEvent:
        return build_event(event_type=event_type, source=SOURCE, subject=subject, data=data,
                           event_id=derived_event_id(cause_id, event_type))

    publish = [
        (topics.ROUTED, event(events.ROUTED_V1, routed)),
        (topics.destination_topic(destination.destination_id), event(events.DISPATCHED_V1, dispatched)),
    ]
    case = RoutedCase(case_id=application.case_id, reference=application.reference,
                      leika_key=application.leika_key, status=CaseStatus.ROUTED,
                      destination_id=destination.destination_id, authority_ars=decision.authority.ars,
                      rule=decision.rule)
    return Outcome(publish, case)
