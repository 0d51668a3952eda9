"""Intake's HTTP API for portals and citizens' offices (SPEC §5 intake)."""


import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
import uuid6
from fastapi import APIRouter, Depends, Header, Response, status
from prometheus_client import Counter

from services.intake.models import ApplicationAccepted, ApplicationCreate, Case, CasePublic
from services.intake.publishing import BrokerUnavailable, SubmissionPublisher, submitted_event
from services.intake.settings import Settings
from services.intake.store import InFlight, IntakeStore, KeyReused, Replay, Reserved, new_reference
from shared import catalogue
from shared.auth import require
from shared.events import ApplicationSubmitted, CaseStatus, ClientRecord
from shared.problems import ProblemException
from shared.runtime import Service

log = logging.getLogger(__name__)

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def body_hash(body: ApplicationCreate) -> str:
    """A canonical digest of a submission, to tell a replay from a reused key."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_form(body: ApplicationCreate) -> None:
    """Check the LeiKa key against the catalogue and the form against the service's JSON Schema."""
    services = catalogue.load()
    if body.leika_key not in services:
        raise ProblemException(
            422, f"No service with LeiKa key {body.leika_key} in the catalogue.", kind="validation",
            title="Validation failed",
            errors=[{"pointer": "#/leika_key", "detail": "unknown service", "code": "unknown_service"}],
        )
    errors = [
        {
            "pointer": "#/form" + "".join(f"/{part}" for part in error.absolute_path),
            # The validator's message may quote the input; name the failed keyword instead.
            "detail": f"violates '{error.validator}' of the form schema",
            "code": str(error.validator),
        }
        for error in catalogue.validator(body.leika_key).iter_errors(body.form)
    ]
    if errors:
        raise ProblemException(422, "The form does not match the service's schema.", kind="validation",
                               title="Validation failed", errors=errors)


def create_router(
    service: Service, store: IntakeStore, settings: Settings, publisher: SubmissionPublisher
) -> APIRouter:
    """The routes of intake's API."""
    router = APIRouter(prefix="/v1", tags=["applications"])
    received = Counter(
        "ozg_applications_received", "Applications accepted by intake", ["leika_key", "client_kind"],
        registry=service.registry,
    )
    submit_scope = require(service.clients, "applications:submit")
    read_scope = require(service.clients, "applications:read")

    def accepted(case: Case) -> ApplicationAccepted:
        return ApplicationAccepted(
            case_id=case.case_id, reference=case.reference, status=CaseStatus.SUBMITTED,
            links={"status": f"{settings.public_base_url}/v1/applications/{case.case_id}"},
        )

    @router.post(
        "/applications",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Submit an application",
        responses={401: PROBLEM, 403: PROBLEM, 409: PROBLEM, 422: PROBLEM, 503: PROBLEM},
    )
    async def submit(
        body: ApplicationCreate,
        response: Response,
        client: Annotated[ClientRecord, Depends(submit_scope)],
        idempotency_key: Annotated[str, Header(min_length=1, max_length=200)],
    ) -> ApplicationAccepted:
        """Accept an application; answers only after the broker acknowledged it (acks=all)."""
        validate_form(body)
        now = datetime.now(UTC)
        case_id = uuid.UUID(str(uuid6.uuid7()))
        reference = new_reference(now)
        data = ApplicationSubmitted(
            case_id=case_id, reference=reference, leika_key=body.leika_key, region=body.region,
            applicant=body.applicant, form=body.form, attachments=[], client_id=client.client_id,
            client_kind=client.kind, submitted_at=now,
        )
        candidate = Case(
            case_id=case_id,
            reference=reference,
            leika_key=body.leika_key,
            submitted_at=now,
            updated_at=now,
            client_id=client.client_id,
            idempotency_key=idempotency_key,
            body_hash=body_hash(body),
            event_id=str(uuid.uuid4()),
            submission=data.model_dump_json(),
        )
        outcome = await anyio.to_thread.run_sync(store.reserve, candidate)
        if isinstance(outcome, KeyReused):
            raise ProblemException(422, "This Idempotency-Key was used with a different body.",
                                   kind="idempotency-key-reused", title="Idempotency key reused")
        if isinstance(outcome, InFlight):
            raise ProblemException(409, "A request with this Idempotency-Key is being processed.",
                                   kind="idempotency-key-in-flight", title="Request in flight",
                                   headers={"Retry-After": "1"})
        if isinstance(outcome, Replay):
            response.headers["Location"] = f"/v1/applications/{outcome.case.case_id}"
            return accepted(outcome.case)
        assert isinstance(outcome, Reserved)
        case = outcome.case
        try:
            await publisher.publish(submitted_event(case, data))
        except BrokerUnavailable as exc:
            log.warning("submission not published", extra={"case_id": str(case.case_id), "error": str(exc),
                                                           "maybe_sent": exc.maybe_sent})
            retry_after = {"Retry-After": str(settings.retry_after_s)}
            if exc.maybe_sent:
                # The producer still holds the event and may deliver it: the case stays pending, invisible, and
                # the outbox settles it. A retry with the same Idempotency-Key then gets this very case.
                raise ProblemException(
                    503, "The message broker did not acknowledge the application in time. Retry with the same "
                    "Idempotency-Key.", kind="broker-unavailable", title="Service unavailable", headers=retry_after,
                ) from None
            await anyio.to_thread.run_sync(store.release, case.case_id)
            raise ProblemException(503, "The message broker is unavailable; nothing was accepted. Retry later.",
                                   kind="broker-unavailable", title="Service unavailable",
                                   headers=retry_after) from None
        case = await anyio.to_thread.run_sync(store.accept, case.case_id)
        received.labels(body.leika_key, client.kind.value).inc()
        response.headers["Location"] = f"/v1/applications/{case.case_id}"
        return accepted(case)

    @router.get("/applications/{case_id}", summary="Status and history of a case",
                responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM})
    async def get_application(
        case_id: uuid.UUID, client: Annotated[ClientRecord, Depends(read_scope)]
    ) -> CasePublic:
        """A case's status and history; a client sees only its own cases (404 otherwise)."""
        case = await anyio.to_thread.run_sync(store.get, case_id, client.client_id)
        if case is None:
            raise ProblemException(404, "No such case.", kind="not-found")
        return case

    @router.get("/services", tags=["catalogue"], summary="The service catalogue")
    async def list_services() -> list[dict[str, Any]]:
        """Every service that can be applied for: LeiKa key, names, competent level and form JSON Schema."""
        return [entry.model_dump() for entry in catalogue.load().values()]

    return router
