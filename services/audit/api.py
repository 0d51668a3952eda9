"""Audit's HTTP API for auditors and data-protection officers (SPEC §5 audit)."""


import uuid
from collections.abc import Sequence
from typing import Annotated, Any

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.audit.models import CaseTrail, CheckpointList, PublicKey, PublicKeyList, VerifyReport
from services.audit.monitor import ChainMonitor
from services.audit.signing import CheckpointSigner, public_pem, trusted_keys
from services.audit.store import HEAD_HASH, Anchor, AuditStore
from shared.auth import require
from shared.db import MAX_BIGINT
from shared.events import ClientRecord
from shared.problems import MEDIA_TYPE, ProblemException
from shared.runtime import Service

PROBLEM: dict[str, Any] = {"content": {MEDIA_TYPE: {}}}
PEM_MEDIA_TYPE = "application/x-pem-file"


def create_router(
    service: Service, store: AuditStore, signer: CheckpointSigner, trusted: Sequence[Ed25519PublicKey],
    monitor: ChainMonitor,
) -> APIRouter:
    """The routes of audit's API; ``trusted`` are the public keys verification accepts (the signer's among them),
    ``monitor`` verifies the chain and exports the verdict."""
    keys = PublicKeyList(keys=[
        PublicKey(key_id=kid, pem=public_pem(key).decode("ascii"), signing=kid == signer.key_id)
        for kid, key in trusted_keys(trusted).items()
    ])
    router = APIRouter(prefix="/v1", tags=["audit"])
    read_scope = require(service.clients, "audit:read")

    @router.get("/cases/{case_id}/trail", summary="The audit trail of a case",
                responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM})
    async def trail(case_id: uuid.UUID, _client: Annotated[ClientRecord, Depends(read_scope)]) -> CaseTrail:
        """Every audit entry of the case in chain order, with the fields needed to recompute each hash."""
        entries = await anyio.to_thread.run_sync(store.trail, str(case_id))
        if not entries:
            raise ProblemException(404, "No audit entries for this case.", kind="not-found")
        return CaseTrail(case_id=case_id, entries=entries)

    @router.get("/verify", summary="Verify the whole hash chain",
                responses={401: PROBLEM, 403: PROBLEM, 422: PROBLEM})
    async def verify(
        _client: Annotated[ClientRecord, Depends(read_scope)],
        seq: Annotated[int | None, Query(
            ge=1, le=MAX_BIGINT, description="seq of a checkpoint you kept (with head_hash): the chain must reach it",
        )] = None,
        head_hash: Annotated[str | None, Query(
            pattern=f"^{HEAD_HASH}$", description="head_hash of that checkpoint: entry seq's hash must be it",
        )] = None,
    ) -> VerifyReport:
        """Recompute the chain: whether it is intact, its length and head hash, or the first broken entry.

        With ``seq`` and ``head_hash`` of a checkpoint fetched earlier from ``/v1/checkpoints`` (its signature
        checked) and kept outside audit, the chain must also reach entry ``seq`` with that hash: this catches a
        tail removed together with its checkpoints, which the checkpoints stored beside the chain cannot."""
        if (seq is None) != (head_hash is None):
            missing = "head_hash" if head_hash is None else "seq"
            raise ProblemException(
                422, "Give an expected checkpoint as both seq and head_hash, or neither.", kind="validation",
                title="Validation failed",
                errors=[{"parameter": missing, "in": "query", "detail": "required with the other",
                         "code": "missing"}],
            )
        anchors = [Anchor(seq, head_hash)] if seq is not None and head_hash is not None else []
        return await anyio.to_thread.run_sync(monitor.verify, anchors)

    @router.get("/checkpoints/public-key", summary="The public key of the checkpoint signatures",
                response_class=Response, responses={200: {"content": {PEM_MEDIA_TYPE: {}}}})
    async def public_key() -> Response:
        """The Ed25519 public key (PEM, SubjectPublicKeyInfo) that checks every checkpoint's signature. Public:
        auditors keep a copy, so a checkpoint can be checked without trusting this service."""
        return Response(signer.public_pem, media_type=PEM_MEDIA_TYPE, headers={"X-Key-Id": signer.key_id})

    @router.get("/checkpoints/public-keys", summary="Every public key that checks checkpoint signatures")
    async def public_keys() -> PublicKeyList:
        """The signing key's public key and those of earlier signing keys (after a rotation) or of the next one
        (before it), each with the id that checkpoints name. Public, like ``/checkpoints/public-key``; take a new
        key into your own copy only through a channel you trust besides this service."""
        return keys

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
