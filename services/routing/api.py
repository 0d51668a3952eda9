"""Routing's HTTP API (SPEC §5 routing)."""

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode
from uuid import UUID

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from services.routing import lifecycle, paging
from services.routing.competence import NoCompetenceRule
from services.routing.directory import AmbiguousPostalCode, Directory, UnknownRegion
from services.routing.dispatch import MANUAL_RULE, authority_for, routed_outcome
from services.routing.lifecycle import status_event
from services.routing.models import (
    ClearingEntry,
    ClearingList,
    Destination,
    DestinationCase,
    DestinationCaseList,
    DestinationChannels,
    DestinationIn,
    DestinationOut,
    DestinationPublic,
    FailedWebhookDelivery,
    KafkaChannel,
    ManualRouting,
    ManualRoutingDone,
    RouteAnswer,
    StatusAccepted,
    StatusReport,
    WebhookOut,
)
from services.routing.publishing import OutboxPublisher
from services.routing.registry import RoutingState
from services.routing.webhooks import NotRedeliverable, WebhookStore, allowed_url, listed, redeliveries_counter
from shared import catalogue, topics
from shared.auth import require
from shared.db import MAX_BIGINT
from shared.events import (
    ApplicationSubmitted,
    CaseStatus,
    CaseStatusChanged,
    ClientRecord,
    Instant,
    Region,
    ResolvedRegion,
)
from shared.problems import ProblemException, validation_errors
from shared.runtime import Service

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def create_router(state: RoutingState) -> APIRouter:
    """The routes of routing's API."""
    router = APIRouter(prefix="/v1", tags=["routes"])

    @router.get("/routes", summary="Find the competent authority and its destinations",
                responses={404: PROBLEM, 409: PROBLEM, 422: PROBLEM})
    async def route(
        leika_key: Annotated[str, Query(pattern=r"^99\d{12}$", description="LeiKa key (14 digits)")],
        ars: Annotated[str | None, Query(description="Regionalschlüssel (12 digits)")] = None,
        ags: Annotated[str | None, Query(description="Gemeindeschlüssel (8 digits)")] = None,
        postal_code: Annotated[str | None, Query(description="Postleitzahl (5 digits)")] = None,
        place: Annotated[str | None, Query(description="Place name, to decide a shared postal code")] = None,
    ) -> RouteAnswer:
        """Public lookup, in the manner of FIT-Connect's Routing API."""
        try:
            region = Region(ars=ars, ags=ags, postal_code=postal_code, place=place)
        except ValidationError as exc:
            errors = validation_errors(
                [{**e, "loc": ("query", *(e["loc"] or ("region",)))} for e in exc.errors()]
            )
            raise ProblemException(422, "The region is not valid.", kind="validation", title="Validation failed",
                                   errors=errors) from None
        try:
            gemeinde = state.directory.resolve(region)
        except UnknownRegion as exc:
            raise ProblemException(404, str(exc), kind="unknown-region") from None
        except AmbiguousPostalCode as exc:
            candidates = [ResolvedRegion(ars=g.ars, ags=g.ags, name=g.name).model_dump() for g in exc.candidates]
            raise ProblemException(409, f"{exc}; name the place to decide.", kind="ambiguous-postal-code",
                                   extra={"candidates": candidates}) from None
        try:
            decision = state.rules.decide(state.directory, gemeinde, leika_key)
        except NoCompetenceRule as exc:
            raise ProblemException(404, str(exc), kind="no-competence-rule") from None
        return RouteAnswer(
            leika_key=leika_key,
            region=ResolvedRegion(ars=gemeinde.ars, ags=gemeinde.ags, name=gemeinde.name),
            authority=decision.authority,
            rule=decision.rule,
            destinations=[
                DestinationPublic(destination_id=d.destination_id, name=d.name, channels=d.channels)
                for d in state.destinations_for(decision.authority.ars, leika_key)
            ],
        )

    return router


def _destination_out(destination: Destination) -> DestinationOut:
    webhook = WebhookOut(url=destination.webhook_url) if destination.webhook_url else None
    return DestinationOut(
        destination_id=destination.destination_id, name=destination.name,
        authority_ars=destination.authority_ars, leika_keys=list(destination.leika_keys),
        channels=DestinationChannels(kafka=KafkaChannel(topic=topics.destination_topic(destination.destination_id)),
                                     webhook=webhook),
        created_at=destination.created_at, updated_at=destination.updated_at,
    )


def create_operator_router(service: Service, state: RoutingState, publisher: OutboxPublisher) -> APIRouter:
    """The operator's routes: the destination registry and clearing."""
    router = APIRouter(prefix="/v1")
    can_write = Depends(require(service.clients, "destinations:write"))
    can_read = Depends(require(service.clients, "destinations:read"))
    can_clear = Depends(require(service.clients, "clearing"))
    store = state.store

    @router.put("/destinations/{destination_id}", tags=["destinations"], dependencies=[can_write],
                summary="Register or replace a destination (back office)", response_model=DestinationOut,
                responses={200: {"description": "Replaced"}, 201: {"description": "Registered"},
                           401: PROBLEM, 403: PROBLEM, 422: PROBLEM, 503: PROBLEM})
    async def put_destination(destination_id: UUID, body: DestinationIn, response: Response) -> DestinationOut:
        """Creates the destination's Kafka topic (and its dead-letter twin) before registering it."""
        existing = await anyio.to_thread.run_sync(store.destination, destination_id)
        # A typo would register a back office that never receives a case, and its cases would wait in clearing.
        # What is registered already stays acceptable (a newer Gebietsstand may have dropped it): a stale
        # registration must still take a new webhook secret.
        errors: list[dict[str, str]] = []
        if (existing is None or existing.authority_ars != body.authority_ars) and \
                not state.directory.has_authority(body.authority_ars):
            errors.append({"pointer": "#/authority_ars", "code": "unknown_authority",
                           "detail": f"not in the directory (Gebietsstand {state.directory.gebietsstand})"})
        known = set(catalogue.load()) | set(existing.leika_keys if existing is not None else [])
        errors += [{"pointer": f"#/leika_keys/{i}", "detail": "not in the service catalogue",
                    "code": "unknown_leika_key"} for i, key in enumerate(body.leika_keys) if key not in known]
        if body.webhook is not None and not allowed_url(str(body.webhook.url), publisher.settings):
            errors.append({"pointer": "#/webhook/url", "detail": "must use https", "code": "https_required"})
        if errors:
            raise ProblemException(422, "The destination is not valid; see errors.", kind="validation",
                                   title="Validation failed", errors=errors)
        secret = None
        if body.webhook is not None:
            # A secret is kept only for the same URL: the previous receiver's secret must never sign for another.
            kept = (existing.webhook_secret
                    if existing is not None and existing.webhook_url == str(body.webhook.url) else None)
            secret = body.webhook.secret or kept
            if secret is None:
                raise ProblemException(422, "A new webhook needs a secret.", kind="validation",
                                       title="Validation failed",
                                       errors=[{"pointer": "#/webhook/secret", "detail": "required"}])
        try:
            await state.ensure_topic(service.settings.kafka, destination_id)
        except Exception as exc:
            raise ProblemException(503, "The broker is not reachable; try again.", kind="unavailable",
                                   headers={"Retry-After": "5"}) from exc
        destination = Destination(
            destination_id=destination_id, name=body.name, authority_ars=body.authority_ars,
            leika_keys=sorted(set(body.leika_keys)),
            webhook_url=str(body.webhook.url) if body.webhook is not None else None, webhook_secret=secret,
        )
        await anyio.to_thread.run_sync(store.upsert_destination, destination)
        await anyio.to_thread.run_sync(state.refresh)
        saved = await anyio.to_thread.run_sync(store.destination, destination_id)
        assert saved is not None
        response.status_code = 200 if existing is not None else 201
        return _destination_out(saved)

    @router.get("/destinations/{destination_id}", tags=["destinations"], dependencies=[can_read],
                summary="A registered destination", responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM})
    async def get_destination(destination_id: UUID) -> DestinationOut:
        destination = await anyio.to_thread.run_sync(store.destination, destination_id)
        if destination is None:
            raise ProblemException(404, "No destination with this id.", kind="unknown-destination")
        return _destination_out(destination)

    @router.delete("/destinations/{destination_id}", tags=["destinations"], dependencies=[can_write],
                   status_code=204, summary="Remove a destination (its topic stays)",
                   responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM})
    async def delete_destination(destination_id: UUID) -> Response:
        if not await anyio.to_thread.run_sync(store.delete_destination, destination_id):
            raise ProblemException(404, "No destination with this id.", kind="unknown-destination")
        await anyio.to_thread.run_sync(state.refresh)
        return Response(status_code=204)

    @router.get("/clearing", tags=["clearing"], dependencies=[can_clear],
                summary="Unroutable cases waiting for an operator (no personal data)",
                responses={401: PROBLEM, 403: PROBLEM})
    async def list_clearing(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
    ) -> ClearingList:
        cases = await anyio.to_thread.run_sync(store.clearing_cases, limit, offset)
        return ClearingList(cases=[
            ClearingEntry(case_id=c.case_id, reference=c.reference, leika_key=c.leika_key, reason=c.reason,
                          detail=c.detail, waiting_since=c.created_at)
            for c in cases
        ])

    keep = publisher.settings.webhook_failed_keep
    redeliveries = redeliveries_counter(service.registry)

    @router.get("/clearing/webhooks", tags=["clearing"], dependencies=[can_clear],
                summary="Webhook deliveries given up on (no personal data)",
                responses={401: PROBLEM, 403: PROBLEM})
    async def list_failed_webhooks(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
    ) -> list[FailedWebhookDelivery]:
        """The case's events stay on the destination's topic; each of these can be redelivered while its event is
        kept (``redeliverable``, ``redeliverable_until``)."""
        failed = await anyio.to_thread.run_sync(WebhookStore(service.engine).failed, limit, offset)
        now = datetime.now(UTC)
        return [listed(d, has_body, keep, now) for d, has_body in failed]

    @router.post("/clearing/webhooks/{delivery_id}/redeliver", tags=["clearing"], dependencies=[can_clear],
                 status_code=202, summary="Deliver a failed webhook delivery again, to the current webhook",
                 responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 409: PROBLEM})
    async def redeliver_webhook(delivery_id: UUID) -> FailedWebhookDelivery:
        """Once the receiver is fixed: the delivery is pending again, attempted at once and retried as a new one
        would be, with the same ``ce-id``. 409 when it is not failed or its event was deleted."""
        try:
            delivery = await anyio.to_thread.run_sync(WebhookStore(service.engine).redeliver, delivery_id,
                                                      datetime.now(UTC), keep)
        except NotRedeliverable as exc:
            raise ProblemException(404 if exc.kind == "unknown-delivery" else 409, exc.detail, kind=exc.kind) from None
        redeliveries.inc()
        return listed(delivery, bool(delivery.body), keep, datetime.now(UTC))

    @router.post("/clearing/{case_id}", tags=["clearing"], dependencies=[can_clear],
                 summary="Route an unroutable case by hand to a destination",
                 responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM, 503: PROBLEM})
    async def route_by_hand(case_id: UUID, body: ManualRouting) -> ManualRoutingDone:
        """Publishes the routed event (``manual: true``) and dispatches the case to the destination's topic."""
        waiting = await anyio.to_thread.run_sync(store.clearing_case, case_id)
        if waiting is None:
            known = await anyio.to_thread.run_sync(store.case, case_id)
            if known is not None and known.status == CaseStatus.ROUTED:
                raise ProblemException(409, "The case is already routed.", kind="already-routed")
            if known is not None:  # withdrawn while it waited, say
                current = CaseStatus(known.status).value
                raise ProblemException(409, f"The case left clearing: it is {current}.", kind="left-clearing",
                                       extra={"current_status": current})
            raise ProblemException(404, "No case with this id waits in clearing.", kind="unknown-case")
        destination = await anyio.to_thread.run_sync(store.destination, body.destination_id)
        if destination is None:
            raise ProblemException(422, "No destination with this id.", kind="validation", title="Validation failed",
                                   errors=[{"pointer": "#/destination_id", "detail": "unknown destination"}])
        application = ApplicationSubmitted.model_validate(waiting.application)
        directory = state.directory
        region = _manual_region(directory, body.region or application.region, destination.authority_ars)
        authority = authority_for(directory, destination.authority_ars, destination.name)
        outcome = routed_outcome(waiting.cause_event_id, application, region, authority, MANUAL_RULE, destination,
                                 manual=True)
        try:
            await state.ensure_topic(service.settings.kafka, destination.destination_id)
        except Exception as exc:
            raise ProblemException(503, "The broker is not reachable; the case stays in clearing.",
                                   kind="unavailable", headers={"Retry-After": "5"}) from exc
        if not await anyio.to_thread.run_sync(store.resolve_clearing, outcome.case, outcome.publish, outcome.webhook):
            raise ProblemException(409, "The case left clearing meanwhile (withdrawn, or routed by someone else).",
                                   kind="left-clearing")
        # Stored with the decision: if the broker is slow now, the outbox sweep publishes the events later.
        await publisher.flush(str(case_id), timeout_s=publisher.settings.status_publish_timeout_s)
        return ManualRoutingDone(case_id=case_id, status=CaseStatus.ROUTED, destination_id=destination.destination_id,
                                 authority=authority, rule=MANUAL_RULE)

    return router


def _manual_region(directory: Directory, region: Region, authority_ars: str) -> ResolvedRegion:
    """The Gemeinde of a manually routed case: the region named, or the destination's own Gemeinde."""
    try:
        gemeinde = directory.resolve(region)
    except (UnknownRegion, AmbiguousPostalCode) as exc:
        fallback = directory.by_ars.get(authority_ars)
        if fallback is None:
            raise ProblemException(
                422, f"{exc}; name the Gemeinde of the case in 'region'.", kind="validation",
                title="Validation failed", errors=[{"pointer": "#/region", "detail": "needed to route this case"}],
            ) from None
        gemeinde = fallback
    return ResolvedRegion(ars=gemeinde.ars, ags=gemeinde.ags, name=gemeinde.name)


def create_destination_router(service: Service, state: RoutingState, publisher: OutboxPublisher) -> APIRouter:
    """The back office's routes: its cases (pull) and the status it reports for them (SPEC §4, §5)."""
    router = APIRouter(prefix="/v1", tags=["back office"])
    store = state.store

    @router.post("/cases/{case_id}/status", status_code=202,
                 summary="Report a status change of a case dispatched to the calling destination",
                 responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 409: PROBLEM, 413: PROBLEM, 422: PROBLEM})
    async def report_status(
        case_id: UUID, body: StatusReport,
        client: Annotated[ClientRecord, Depends(require(service.clients, "cases:status"))],
    ) -> StatusAccepted:
        """Checked against the status model (409 names the allowed next states), stored with its
        ``de.ozg.case.status-changed.v1`` event, which is published on ``ozg.cases.status`` (acks=all) before the
        answer (``published: true``) or, if the broker is not reachable in time, later by the outbox under the
        same ``event_id`` (``published: false``)."""
        case = await anyio.to_thread.run_sync(store.case, case_id)
        if case is None or client.destination_id is None or case.destination_id != client.destination_id:
            raise ProblemException(404, "No case with this id was dispatched to this destination.",
                                   kind="unknown-case")
        new = CaseStatus(body.status)
        previous = CaseStatus(case.status)  # loaded from the database as a plain string
        if not lifecycle.may_report(previous, new):
            raise _conflict(previous, new)
        changed_at = datetime.now(UTC)
        change = CaseStatusChanged(
            case_id=case_id, reference=case.reference, status=new, previous_status=previous,
            leika_key=case.leika_key, destination_id=case.destination_id, outcome=body.outcome,
            message=body.message, problems=body.problems, changed_at=changed_at,
        )
        event = status_event(change)
        # An event the consumers dead-letter would leave the services out of step.
        limit = publisher.settings.kafka.max_published_bytes
        if len(event.value) > limit:
            raise ProblemException(413, f"A status report may have at most {limit} bytes of data.",
                                   kind="status-report-too-large", title="Status report too large")
        # Compare-and-set, with the event stored in the same transaction (outbox): of two concurrent reports only
        # one moves the case, and a change is never left unannounced, whatever happens to the broker or to us.
        if not await anyio.to_thread.run_sync(store.transition, case_id, previous, new, changed_at,
                                              client.destination_id, event):
            current = await anyio.to_thread.run_sync(store.case, case_id)
            raise _conflict(CaseStatus(current.status) if current is not None else previous, new)
        # The case's earlier unsent events (if any) go first: its events stay in order on the topic.
        published = await publisher.flush(str(case_id), timeout_s=publisher.settings.status_publish_timeout_s)
        return StatusAccepted(case_id=case_id, status=new, previous_status=previous, event_id=event.event_id,
                              changed_at=changed_at, published=published)

    @router.get("/destinations/{destination_id}/cases",
                summary="The calling destination's cases (metadata; the cases themselves are on its topic)",
                responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM})
    async def list_cases(
        destination_id: UUID,
        request: Request,
        client: Annotated[ClientRecord, Depends(require(service.clients, "cases:read"))],
        status: Annotated[CaseStatus | None, Query(description="only cases in this status")] = None,
        since: Annotated[Instant | None, Query(description="only cases changed after this time (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=200, description="opaque position: the `cursor` of the "
                                                                        "previous page (or follow its `next`)")] = None,
    ) -> DestinationCaseList:
        """Keyset-paged, least recently changed first: a page goes on exactly where the previous one ended, so
        cases added or changed meanwhile never shift or repeat a page (a changed case reappears at its new
        position). The full case (with the applicant's data) is the dispatched event on
        ``ozg.dest.<destination_id>``; attachments come from intake's ``GET /v1/attachments/{id}``."""
        if client.destination_id != destination_id:
            raise ProblemException(404, "No destination with this id.", kind="unknown-destination")
        if since is not None and since.utcoffset() is None:
            since = since.replace(tzinfo=UTC)
        after = paging.decode(cursor) if cursor is not None else None
        cases = await anyio.to_thread.run_sync(
            lambda: store.destination_cases(destination_id, status=status, since=since, limit=limit + 1,
                                            after=after))
        page, more = cases[:limit], len(cases) > limit
        position = paging.encode(page[-1].updated_at, page[-1].case_id) if page else cursor
        next_link = None
        if more and position is not None:
            query = {"limit": limit, "cursor": position, "status": status.value if status else None,
                     "since": since.isoformat() if since else None}
            next_link = f"{request.url.path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        return DestinationCaseList(
            cases=[DestinationCase(case_id=c.case_id, reference=c.reference, leika_key=c.leika_key,
                                   status=CaseStatus(c.status), updated_at=c.updated_at) for c in page],
            cursor=position, next=next_link,
        )

    return router


def _conflict(current: CaseStatus, new: CaseStatus) -> ProblemException:
    allowed = [s.value for s in lifecycle.allowed_next(current)]
    return ProblemException(
        409, f"A case in status {current.value!r} cannot become {new.value!r}.", kind="invalid-transition",
        title="Transition not allowed", extra={"current_status": current.value, "allowed": allowed},
    )
