"""Intake's HTTP API for portals and citizens' offices (SPEC §5 intake)."""


import base64
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import anyio.to_thread
import uuid6
from fastapi import APIRouter, Depends, Header, Request, Response, status
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from services.intake.attachments import BODY_ALLOWANCE, MEDIA_TYPES, receive, too_large
from services.intake.blobs import BlobStore
from services.intake.models import (
    ApplicationAccepted,
    ApplicationCreate,
    Attachment,
    AttachmentPublic,
    Case,
    CasePublic,
    NewCase,
)
from services.intake.publishing import BrokerUnavailable, SubmissionPublisher, submitted_event, withdrawn_event
from services.intake.ratelimit import RateLimiter
from services.intake.settings import Settings
from services.intake.store import (
    AttachmentsTaken,
    InFlight,
    IntakeStore,
    KeyReused,
    Replay,
    Reserved,
    new_reference,
)
from services.intake.writer import SubmissionWriter
from shared import catalogue, topics
from shared.auth import identify, require
from shared.events import ApplicationSubmitted, AttachmentRef, CaseStatus, CaseStatusChanged, ClientRecord
from shared.problems import RETRY_AFTER, ProblemException, responses
from shared.runtime import Service

log = logging.getLogger(__name__)

RATE_LIMIT_HEADERS: dict[str, Any] = {
    name: {"description": description, "schema": {"type": "integer", "minimum": 0}}
    for name, description in (
        ("RateLimit-Limit", "Requests allowed per window for this client"),
        ("RateLimit-Remaining", "Requests left in the current window"),
        ("RateLimit-Reset", "Seconds until the window allows requests again"),
    )
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for ``statuses``, each an RFC 9457 problem; a 429 names the rate-limit headers."""
    return responses(*statuses, headers={429: {**RETRY_AFTER, **RATE_LIMIT_HEADERS}})


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
            "pointer": "#/form" + "".join(f"/{part}" for part in error.instance_path),
            # The validator's message may quote the input; name the failed keyword instead.
            "detail": f"violates '{keyword}' of the form schema",
            "code": keyword,
        }
        for error in catalogue.validator(body.leika_key).iter_errors(body.form)
        for keyword in [str(error.schema_path[-1]) if error.schema_path else "schema"]
    ]
    if errors:
        raise ProblemException(422, "The form does not match the service's schema.", kind="validation",
                               title="Validation failed", errors=errors)


UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "PDF, PNG, JPEG or XML (judged by the content)"},
                        "sha512": {"type": "string", "pattern": "^[0-9a-f]{128}$",
                                   "description": "optional: the SHA-512 the client computed; checked"},
                    },
                }
            }
        },
    }
}
_bearer = HTTPBearer(auto_error=False, description="API key of a client (SPEC §5)")


# SPEC §4: the applicant may withdraw from any state before ``decided``.
WITHDRAWABLE = frozenset({
    CaseStatus.SUBMITTED, CaseStatus.ROUTED, CaseStatus.UNROUTABLE, CaseStatus.RECEIVED, CaseStatus.IN_PROGRESS,
    CaseStatus.INFORMATION_REQUESTED,
})


def attachment_problem(index: int, detail: str, code: str) -> dict[str, str]:
    return {"pointer": f"#/attachments/{index}", "detail": detail, "code": code}


def create_router(
    service: Service, store: IntakeStore, settings: Settings, publisher: SubmissionPublisher, blobs: BlobStore,
    limiter: RateLimiter | None = None, writer: SubmissionWriter | None = None,
) -> APIRouter:
    """The routes of intake's API; the client-authenticated ones count against the client's rate limit."""
    limiter = limiter or RateLimiter(settings.rate_limit)
    writer = writer or SubmissionWriter(store)
    router = APIRouter(prefix="/v1", tags=["applications"])
    received = Counter(
        "ozg_applications_received", "Applications accepted by intake", ["leika_key", "client_kind"],
        registry=service.registry,
    )
    submit_scope = limiter.dependency(require(service.clients, "applications:submit"))
    read_scope = limiter.dependency(require(service.clients, "applications:read"))

    def accepted(case: Case | NewCase) -> ApplicationAccepted:
        return ApplicationAccepted(
            case_id=case.case_id, reference=case.reference, status=CaseStatus.SUBMITTED,
            links={"status": f"{settings.public_base_url}/v1/applications/{case.case_id}"},
        )

    async def attachment_refs(ids: list[uuid.UUID], client: ClientRecord) -> list[AttachmentRef]:
        """The claim-checks of an application's attachments: each must exist and be the client's own."""
        if not ids:
            return []
        errors = [attachment_problem(i, "listed twice", "duplicate") for i, a in enumerate(ids) if a in ids[:i]]
        owned = await anyio.to_thread.run_sync(store.owned_attachments, ids, client.client_id)
        errors += [attachment_problem(i, "no such attachment of this client", "unknown_attachment")
                   for i, a in enumerate(ids) if a not in owned]
        if errors:
            raise ProblemException(422, "The application names attachments it cannot use.", kind="validation",
                                   title="Validation failed", errors=errors)
        total = sum(row.size for row in owned.values())
        if total > settings.max_application_attachment_bytes:
            raise ProblemException(
                413, f"The attachments of one application may have at most "
                f"{settings.max_application_attachment_bytes} bytes together.", kind="attachments-too-large",
                title="Attachments too large",
            )
        return [
            AttachmentRef(attachment_id=row.attachment_id, filename=row.filename, media_type=row.media_type,
                          size=row.size, sha512=row.sha512)
            for row in (owned[a] for a in ids)
        ]

    @router.post(
        "/applications",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Submit an application",
        responses=problems(400, 401, 403, 409, 413, 422, 429, 503),
    )
    async def submit(
        body: ApplicationCreate,
        response: Response,
        client: Annotated[ClientRecord, Depends(submit_scope)],
        idempotency_key: Annotated[str, Header(min_length=1, max_length=200)],
    ) -> ApplicationAccepted:
        """Accept an application; answers only after the broker acknowledged it (acks=all)."""
        validate_form(body)
        refs = await attachment_refs(body.attachments, client)
        now = datetime.now(UTC)
        case_id = uuid.UUID(str(uuid6.uuid7()))
        reference = new_reference(now)
        data = ApplicationSubmitted(
            case_id=case_id, reference=reference, leika_key=body.leika_key, region=body.region,
            applicant=body.applicant, form=body.form, attachments=refs, client_id=client.client_id,
            client_kind=client.kind, submitted_at=now,
        )
        submission = data.model_dump_json()
        limit = settings.kafka.max_published_bytes
        if len(submission.encode()) > limit:
            raise ProblemException(413, f"An application may have at most {limit} bytes of data.",
                                   kind="application-too-large", title="Application too large")
        candidate = NewCase(
            case_id=case_id,
            reference=reference,
            leika_key=body.leika_key,
            submitted_at=now,
            client_id=client.client_id,
            idempotency_key=idempotency_key,
            body_hash=body_hash(body),
            event_id=str(uuid.uuid4()),
            submission=submission,
        )
        outcome = await writer.reserve(candidate, body.attachments)
        if isinstance(outcome, AttachmentsTaken):
            raise ProblemException(
                422, "An attachment already belongs to another application.", kind="validation",
                title="Validation failed",
                errors=[{"pointer": f"#/attachments/{i}", "detail": "already used", "code": "attachment_taken"}
                        for i in outcome.positions],
            )
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
            await publisher.publish(submitted_event(case, now))
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
        case = await writer.accept(case)
        received.labels(body.leika_key, client.kind.value).inc()
        response.headers["Location"] = f"/v1/applications/{case.case_id}"
        return accepted(case)

    @router.get("/applications/{case_id}", summary="Status and history of a case",
                responses=problems(401, 403, 404, 422, 429))
    async def get_application(
        case_id: uuid.UUID, client: Annotated[ClientRecord, Depends(read_scope)]
    ) -> CasePublic:
        """A case's status and history; a client sees only its own cases (404 otherwise)."""
        case = await anyio.to_thread.run_sync(store.get, case_id, client.client_id)
        if case is None:
            raise ProblemException(404, "No such case.", kind="not-found")
        return case

    @router.post(
        "/applications/{case_id}/withdrawal",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Withdraw an application (before it is decided)",
        responses=problems(401, 403, 404, 409, 422, 429, 503),
    )
    async def withdraw(
        case_id: uuid.UUID, client: Annotated[ClientRecord, Depends(submit_scope)]
    ) -> CasePublic:
        """Withdraw the client's own case; answers after the broker acknowledged the status change (acks=all)."""
        case = await anyio.to_thread.run_sync(store.owned_case, case_id, client.client_id)
        if case is None:
            raise ProblemException(404, "No such case.", kind="not-found")
        current = CaseStatus(case.status)
        if current not in WITHDRAWABLE:
            raise ProblemException(
                409, f"A case in status {current.value!r} can no longer be withdrawn.", kind="not-withdrawable",
                title="Conflict", extra={"current_status": current.value},
            )
        change = CaseStatusChanged(
            case_id=case.case_id, reference=case.reference, status=CaseStatus.WITHDRAWN, previous_status=current,
            leika_key=case.leika_key, destination_id=case.destination_id, changed_at=datetime.now(UTC),
        )
        event = withdrawn_event(change)
        try:
            await publisher.publish(event, topics.CASE_STATUS)
        except BrokerUnavailable as exc:
            log.warning("withdrawal not published", extra={"case_id": str(case_id), "error": str(exc),
                                                          "maybe_sent": exc.maybe_sent})
            detail = ("The message broker did not acknowledge the withdrawal in time; it may still take effect. "
                      "Check the case's status before retrying." if exc.maybe_sent else
                      "The message broker is unavailable; the case was not withdrawn. Retry later.")
            raise ProblemException(503, detail, kind="broker-unavailable", title="Service unavailable",
                                   headers={"Retry-After": str(settings.retry_after_s)}) from None
        # Recorded under the event's id: when intake's own consumer reads the event back, it is a repeat.
        await anyio.to_thread.run_sync(
            store.record_status, event.event_id, case_id, CaseStatus.WITHDRAWN, change.changed_at, None, None
        )
        withdrawn = await anyio.to_thread.run_sync(store.get, case_id, client.client_id)
        assert withdrawn is not None
        return withdrawn

    upload_scope = limiter.dependency(require(service.clients, "attachments:write"))

    async def any_client(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> ClientRecord:
        """Any live client (401 otherwise): who may download is decided per attachment."""
        return identify(service.clients, credentials)

    download_client = limiter.dependency(any_client)

    @router.post(
        "/attachments",
        status_code=status.HTTP_201_CREATED,
        tags=["attachments"],
        summary="Upload an attachment (multipart/form-data, field 'file')",
        openapi_extra=UPLOAD_SCHEMA,
        responses=problems(401, 403, 413, 415, 422, 429),
    )
    async def upload(
        request: Request, response: Response, client: Annotated[ClientRecord, Depends(upload_scope)]
    ) -> AttachmentPublic:
        """Stream a file into the blob store; its media type is judged from its content, never from the header."""
        limit = settings.max_attachment_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + BODY_ALLOWANCE:
            raise too_large(limit)
        upload, fields = await receive(request.headers.get("content-type", ""), request.stream(), blobs, limit)
        expected = fields.get("sha512")
        if expected is not None and expected.strip().lower() != upload.sha512:
            await blobs.delete(upload.attachment_id)
            raise ProblemException(
                422, "The file's SHA-512 differs from the one sent along; nothing was stored.", kind="validation",
                title="Validation failed",
                errors=[{"pointer": "#/sha512", "detail": "does not match the file", "code": "hash_mismatch"}],
            )
        row = Attachment(attachment_id=upload.attachment_id, client_id=client.client_id, filename=upload.filename,
                         media_type=upload.media_type, size=upload.size, sha512=upload.sha512)
        try:
            await anyio.to_thread.run_sync(store.add_attachment, row)
        except BaseException:
            await blobs.delete(upload.attachment_id)
            raise
        response.headers["Location"] = f"/v1/attachments/{upload.attachment_id}"
        return AttachmentPublic(id=upload.attachment_id, filename=upload.filename, size=upload.size,
                                media_type=upload.media_type, sha512=upload.sha512)

    @router.get(
        "/attachments/{attachment_id}",
        tags=["attachments"],
        summary="Download an attachment",
        response_class=StreamingResponse,
        responses={
            200: {"description": "The file, with its media type",
                  "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES}},
            **problems(401, 404, 422, 429),
        },
    )
    async def download(
        attachment_id: uuid.UUID, client: Annotated[ClientRecord, Depends(download_client)]
    ) -> StreamingResponse:
        """For the client that uploaded it and for the destination its case was dispatched to; 404 for others."""
        found = await anyio.to_thread.run_sync(store.attachment, attachment_id)
        allowed = found is not None and (
            (found[0].client_id == client.client_id and "attachments:write" in client.scopes)
            or (found[1] is not None and client.destination_id == found[1] and "attachments:read" in client.scopes)
        )
        if found is None or not allowed:
            raise ProblemException(404, "No such attachment.", kind="not-found")
        row = found[0]
        return StreamingResponse(
            blobs.read(row.attachment_id), media_type=row.media_type,
            headers={
                "Content-Length": str(row.size),
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row.filename)}",
                "Repr-Digest": f"sha-512=:{base64.b64encode(bytes.fromhex(row.sha512)).decode()}:",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @router.get("/services", tags=["catalogue"], summary="The service catalogue")
    async def list_services() -> list[dict[str, Any]]:
        """Every service that can be applied for: LeiKa key, names, competent level and form JSON Schema."""
        return [entry.model_dump() for entry in catalogue.load().values()]

    return router
