"""Dispatch: turn a submitted application into a routed + dispatched pair of events, or an unroutable one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.routing.competence import CompetenceRules, NoCompetenceRule
from services.routing.directory import AmbiguousPostalCode, Directory, Gemeinde, Kreis, Land, UnknownRegion, Verband
from services.routing.models import CaseRecord, ClearingCase, Destination, WebhookDelivery
from services.routing.webhooks import delivery_for
from shared import events, topics
from shared.envelope import OutgoingEvent, build_event, derived_event_id
from shared.events import (
    ApplicationDispatched,
    ApplicationRouted,
    ApplicationSubmitted,
    ApplicationUnroutable,
    Authority,
    AuthorityLevel,
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
    case: CaseRecord
    # An unroutable case waits in clearing with its application (personal data, kept for routing's own use).
    clearing: ClearingCase | None = None
    # The push of the dispatched event to the destination's webhook, when it has one (persisted with the decision).
    webhook: WebhookDelivery | None = None


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
    case = CaseRecord(case_id=application.case_id, reference=application.reference,
                      leika_key=application.leika_key, status=CaseStatus.UNROUTABLE, reason=reason)
    clearing = ClearingCase(case_id=application.case_id, reference=application.reference,
                            leika_key=application.leika_key, reason=reason, detail=detail[:500],
                            cause_event_id=cause_id, application=application.model_dump(mode="json"))
    return Outcome([(topics.UNROUTABLE, event)], case, clearing)


def decide(
    cause_id: str,
    application: ApplicationSubmitted,
    directory: Directory,
    rules: CompetenceRules,
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
        decision = rules.decide(directory, gemeinde, application.leika_key)
    except NoCompetenceRule as exc:
        return unroutable(cause_id, application, UnroutableReason.NO_COMPETENCE_RULE, str(exc))
    matches = destinations_for(decision.authority.ars, application.leika_key)
    if not matches:
        return unroutable(cause_id, application, UnroutableReason.NO_DESTINATION,
                          f"no destination registered for {decision.authority.name} ({decision.authority.ars})")
    return routed_outcome(cause_id, application, _region(gemeinde.ars, gemeinde.ags, gemeinde.name),
                          decision.authority, decision.rule, matches[0])


MANUAL_RULE = "manual:clearing"


def routed_outcome(
    cause_id: str,
    application: ApplicationSubmitted,
    region: ResolvedRegion,
    authority: Authority,
    rule: str,
    destination: Destination,
    *,
    manual: bool = False,
) -> Outcome:
    """The routed event (metadata only) and the dispatched event (the whole case) for ``destination``.

    A manual routing (clearing) gets its own deterministic ids: a repeated request publishes the same events.
    """
    routed = ApplicationRouted(
        case_id=application.case_id, reference=application.reference, leika_key=application.leika_key,
        region=region, authority=authority, rule=rule, destination_id=destination.destination_id,
        destination_name=destination.name, manual=manual,
    )
    dispatched = ApplicationDispatched(case_id=application.case_id, reference=application.reference,
                                       destination_id=destination.destination_id, routing=routed,
                                       application=application)
    subject = str(application.case_id)
    discriminator = "manual" if manual else ""

    def event(event_type: str, data: ApplicationRouted | ApplicationDispatched) -> OutgoingEvent:
        return build_event(event_type=event_type, source=SOURCE, subject=subject, data=data,
                           event_id=derived_event_id(cause_id, event_type, discriminator))

    dispatched_event = event(events.DISPATCHED_V1, dispatched)
    publish = [
        (topics.ROUTED, event(events.ROUTED_V1, routed)),
        (topics.destination_topic(destination.destination_id), dispatched_event),
    ]
    case = CaseRecord(case_id=application.case_id, reference=application.reference,
                      leika_key=application.leika_key, status=CaseStatus.ROUTED,
                      destination_id=destination.destination_id, authority_ars=authority.ars, rule=rule)
    webhook = delivery_for(destination, dispatched_event, application.case_id) if destination.webhook_url else None
    return Outcome(publish, case, webhook=webhook)


def authority_for(directory: Directory, ars: str, fallback_name: str) -> Authority:
    """The authority with this ARS (2, 5, 9 or 12 digits) as the directory names it."""
    level = {2: AuthorityLevel.LAND, 5: AuthorityLevel.KREIS, 9: AuthorityLevel.VERBAND}.get(
        len(ars), AuthorityLevel.GEMEINDE)
    unit: Land | Kreis | Verband | Gemeinde | None
    if level == AuthorityLevel.LAND:
        unit = directory.laender.get(ars)
    elif level == AuthorityLevel.KREIS:
        unit = directory.kreise.get(ars)
    elif level == AuthorityLevel.VERBAND:
        unit = directory.verbaende.get(ars)
    else:
        unit = directory.by_ars.get(ars)
    return Authority(ars=ars, name=unit.name if unit is not None else fallback_name, level=level)
