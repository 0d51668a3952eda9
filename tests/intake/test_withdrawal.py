"""Withdrawal by the applicant's portal: allowed before ``decided``, published on ``ozg.cases.status`` (acks=all)
before the answer, recorded once in the case history, refused for decided and foreign cases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from services.intake.app import build
from services.intake.settings import Settings
from services.intake.store import IntakeStore
from shared import events, topics
from shared.envelope import build_event, derived_event_id, parse_event
from shared.events import (
    ApplicationRouted,
    Authority,
    AuthorityLevel,
    CaseStatus,
    CaseStatusChanged,
    ClientKind,
    Outcome,
    ResolvedRegion,
)
from shared.idempotency import ProcessedEvent
from shared.settings import KafkaSettings
from tests.factories import WOHNSITZ, application_body
from tests.support import consume, issue_key, produce, running, wait_until


@pytest.fixture
def settings(tmp_path: Path, kafka_settings: KafkaSettings) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await client.post("/v1/applications", json=application_body(),
                                  headers={**bearer(key), "Idempotency-Key": str(uuid.uuid4())})
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def reach_status(client: httpx.AsyncClient, key: str, case_id: str, status: str) -> dict[str, Any]:
    async def current() -> dict[str, Any] | None:
        body: dict[str, Any] = (await client.get(f"/v1/applications/{case_id}", headers=bearer(key))).json()
        return body if body.get("status") == status else None

    result: dict[str, Any] = await wait_until(current)
    return result


async def test_withdrawal_from_routed_is_published_and_recorded_once(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        _, other = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        answer = await submit(client, portal)
        case_id = answer["case_id"]
        destination_id = uuid.uuid4()
        routed = ApplicationRouted(
            case_id=uuid.UUID(case_id), reference=answer["reference"], leika_key=WOHNSITZ,
            region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
            authority=Authority(ars="092730137137", name="Kelheim, St", level=AuthorityLevel.GEMEINDE),
            rule="default:gemeinde", destination_id=destination_id, destination_name="Stadt Kelheim",
        )
        event = build_event(event_type=events.ROUTED_V1, source="/test", subject=case_id, data=routed)
        await produce(kafka_settings, topics.ROUTED, event.value, event.headers, event.key)
        await reach_status(client, portal, case_id, "routed")

        # Another client's case does not exist for it, and is not withdrawn.
        foreign = await client.post(f"/v1/applications/{case_id}/withdrawal", headers=bearer(other))
        assert foreign.status_code == 404
        assert foreign.headers["content-type"] == "application/problem+json"
        unknown = await client.post(f"/v1/applications/{uuid.uuid4()}/withdrawal", headers=bearer(portal))
        assert unknown.status_code == 404
        assert foreign.json()["detail"] == unknown.json()["detail"]

        withdrawn = await client.post(f"/v1/applications/{case_id}/withdrawal", headers=bearer(portal))
        assert withdrawn.status_code == 202, withdrawn.text
        body = withdrawn.json()
        assert body["status"] == "withdrawn"
        assert [h["status"] for h in body["history"]] == ["submitted", "routed", "withdrawn"]

        # The status change is on the topic, in binary content mode, keyed by the case.
        records = await consume(kafka_settings, topics.CASE_STATUS, 1, predicate=lambda r: r.key == case_id.encode())
        envelope = parse_event(records[0].headers, records[0].value, records[0].key)
        assert envelope.type == events.STATUS_CHANGED_V1
        assert envelope.subject == case_id
        assert envelope.source == "/ozg/intake"
        change = envelope.data_as(CaseStatusChanged)
        assert change.status == CaseStatus.WITHDRAWN
        assert change.previous_status == CaseStatus.ROUTED
        assert change.leika_key == WOHNSITZ
        assert change.destination_id == destination_id
        assert change.reference == answer["reference"]

        # Intake reads its own event back and drops it as a repeat: the history holds the withdrawal once.
        def seen_by_consumer() -> bool:
            with Session(service.engine) as session:
                return session.get(ProcessedEvent, (IntakeStore.CONSUMER, envelope.id)) is not None

        await wait_until(seen_by_consumer)
        status = (await client.get(f"/v1/applications/{case_id}", headers=bearer(portal))).json()
        assert [h["status"] for h in status["history"]] == ["submitted", "routed", "withdrawn"]

        # A withdrawn case cannot be withdrawn again.
        again = await client.post(f"/v1/applications/{case_id}/withdrawal", headers=bearer(portal))
        assert again.status_code == 409
        assert again.json()["current_status"] == "withdrawn"


async def test_two_withdrawals_at_the_same_moment_are_one_withdrawal(
    settings: Settings, kafka_settings: KafkaSettings
) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        case_id = (await submit(client, portal))["case_id"]
        url = f"/v1/applications/{case_id}/withdrawal"
        answers = await asyncio.gather(*(client.post(url, headers=bearer(portal)) for _ in range(2)))
        assert {a.status_code for a in answers} <= {202, 409}
        assert 202 in {a.status_code for a in answers}
        # However many requests got through, their events share one id: every consumer takes it once.
        records = await consume(kafka_settings, topics.CASE_STATUS, 1, predicate=lambda r: r.key == case_id.encode())
        envelope = parse_event(records[0].headers, records[0].value, records[0].key)
        assert envelope.id == derived_event_id(case_id, events.STATUS_CHANGED_V1, "withdrawal")
        status = (await client.get(f"/v1/applications/{case_id}", headers=bearer(portal))).json()
        assert [h["status"] for h in status["history"]] == ["submitted", "withdrawn"]


async def test_withdrawal_refused_once_decided(settings: Settings, kafka_settings: KafkaSettings) -> None:
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        answer = await submit(client, portal)
        case_id = answer["case_id"]
        decided = CaseStatusChanged(
            case_id=uuid.UUID(case_id), reference=answer["reference"], status=CaseStatus.DECIDED,
            previous_status=CaseStatus.IN_PROGRESS, leika_key=WOHNSITZ, outcome=Outcome.APPROVED,
            changed_at=datetime.now(UTC),
        )
        event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject=case_id, data=decided)
        await produce(kafka_settings, topics.CASE_STATUS, event.value, event.headers, event.key)
        await reach_status(client, portal, case_id, "decided")

        refused = await client.post(f"/v1/applications/{case_id}/withdrawal", headers=bearer(portal))
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"] == "urn:ozg:problem:not-withdrawable"
        assert problem["status"] == 409
        assert problem["current_status"] == "decided"
        assert "decided" in problem["detail"]
        status = (await client.get(f"/v1/applications/{case_id}", headers=bearer(portal))).json()
        assert status["status"] == "decided"


async def test_a_withdrawal_routing_refused_is_undone(settings: Settings, kafka_settings: KafkaSettings) -> None:
    """The portal withdrew while intake's copy of the status still said routed, though the back office had decided:
    routing refuses the withdrawal (the case's status, previous_status withdrawn), and the case is decided again."""
    service, app = build(settings)
    async with running(service, app) as client:
        _, portal = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        answer = await submit(client, portal)
        case_id = answer["case_id"]
        withdrawn = await client.post(f"/v1/applications/{case_id}/withdrawal", headers=bearer(portal))
        assert withdrawn.json()["status"] == "withdrawn"

        refusal = CaseStatusChanged(case_id=uuid.UUID(case_id), reference=answer["reference"],
                                    status=CaseStatus.DECIDED, previous_status=CaseStatus.WITHDRAWN,
                                    changed_at=datetime.now(UTC))
        event = build_event(event_type=events.STATUS_CHANGED_V1, source="/ozg/routing", subject=case_id,
                            data=refusal)
        await produce(kafka_settings, topics.CASE_STATUS, event.value, event.headers, event.key)
        case = await reach_status(client, portal, case_id, "decided")
        assert [h["status"] for h in case["history"]] == ["submitted", "withdrawn", "decided"]
