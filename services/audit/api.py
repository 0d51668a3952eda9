"""Audit's HTTP API for auditors and data-protection officers (SPEC §5 audit)."""


import logging
import uuid
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from prometheus_client import Gauge

from services.audit.models import CaseTrail, CheckpointList, VerifyReport
from services.audit.signing import CheckpointSigner
from services.audit.store import AuditStore
from shared.auth import require
from shared.db import MAX_BIGINT
from shared.events import ClientRecord
from shared.problems import MEDIA_TYPE, ProblemException
from shared.runtime import Service

log = logging.getLogger(__name__)

PROBLEM: dict[str, Any] = {"content": {MEDIA_TYPE: {}}}
PEM_MEDIA_TYPE = "application/x-pem-file"


def create_router(service: Service, store: AuditStore, signer: CheckpointSigner) -> APIRouter:
    """The routes of audit's API."""
    router = APIRouter(prefix="/v1", tags=["audit"])
    intact = Gauge("ozg_audit_chain_intact", "1 if the last verification found the chain intact, else 0",
                   registry=service.registry)
    read_scope = require(service.clients, "audit:read")

    @router.get("/cases/{case_id}/trail", summary="The audit trail of a case",
                responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM})
    async def trail(case_id: uuid.UUID, _client: Annotated[ClientRecord, Depends(read_scope)]) -> CaseTrail:
        """Every audit entry of the case in chain order, with the fields needed to recompute each hash."""
        entries = await anyio.to_thread.run_sync(store.trail, str(case_id))
        if not entries:
            raise ProblemException(404, "No audit entries for this case.", kind="not-found")
        return CaseTrail(case_id=case_id, entries=entries)

    @router.get("/verify", summary="Verify the whole hash chain", responses={401: PROBLEM, 403: PROBLEM})
    async def verify(_client: Annotated[ClientRecord, Depends(read_scope)]) -> VerifyReport:
        """Recompute the chain: whether it is intact, its length and head hash, or the first broken entry."""
        report = await anyio.to_thread.run_sync(store.verify, signer.public_key)
        intact.set(1 if report.intact else 0)
        if not report.intact:
            log.error("audit chain broken", extra={"first_bad_seq": report.first_bad_seq, "problem": report.problem})
        return report

    @router.get("/checkpoints/public-key", summary="The public key of the checkpoint signatures",
                response_class=Response, responses={200: {"content": {PEM_MEDIA_TYPE: {}}}})
    async def public_key() -> Response:
        """The Ed25519 public key (PEM, SubjectPublicKeyInfo) that checks every checkpoint's signature. Public:
        auditors keep a copy, so a checkpoint can be checked without trusting this service."""
        return Response(signer.public_pem, media_type=PEM_MEDIA_TYPE, headers={"X-Key-Id": signer.key_id})

    @router.get("/checkpoints", summary="Signed checkpoints of the chain",
                responses={401: PROBLEM, 403: PROBLEM, 422: PROBLEM})
    async def checkpoints(
        _client: Annotated[ClientRecord, Depends(read_scope)],
        after_seq: Annotated[int, Query(ge=0, le=MAX_BIGINT, description="Only checkpoints with a greater seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> CheckpointList:
        """Checkpoints in seq order, each signed over (seq, head hash, time); page on with ``after_seq``."""
        found = await anyio.to_thread.run_sync(store.checkpoints, after_seq, limit)
        return CheckpointList(key_id=signer.key_id, checkpoints=found)

    return router
