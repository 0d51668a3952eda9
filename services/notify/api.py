"""Notify's HTTP API for operators (SPEC §5 notify): what was sent to whom, by ids, without contact data."""


from typing import Annotated, Any
from uuid import UUID

import anyio.to_thread
from fastapi import APIRouter, Depends, Query

from services.notify.models import NotificationPublic
from services.notify.store import NotifyStore
from shared.auth import require
from shared.events import ClientRecord
from shared.problems import ProblemException
from shared.runtime import Service

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


def create_router(service: Service, store: NotifyStore) -> APIRouter:
    """The routes of notify's API."""
    router = APIRouter(prefix="/v1", tags=["notifications"])
    read_scope = require(service.clients, "notifications:read")

    @router.get(
        "/notifications",
        summary="The notifications of a case",
        responses={401: PROBLEM, 403: PROBLEM, 404: PROBLEM, 422: PROBLEM},
    )
    async def list_notifications(
        case_id: Annotated[UUID, Query(description="The case whose notifications to list")],
        _client: Annotated[ClientRecord, Depends(read_scope)],
    ) -> list[NotificationPublic]:
        """Each message sent (or not) to the applicant of a case: channel, attempts and outcome, oldest first."""
        notifications = await anyio.to_thread.run_sync(store.for_case, case_id)
        if notifications is None:
            raise ProblemException(404, "Notify knows no case with this id.", kind="not-found")
        return notifications

    return router
