"""Intake against a broker that goes away mid-test and comes back; the outbox of pending cases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from deploy.local.broker import Tansu
from services.intake import publishing
from services.intake.app import build
from services.intake.models import Case, CaseState
from services.intake.publishing import republish_pending
from services.intake.settings import Settings
from shared import topics
from shared.envelope import parse_event
from shared.events import ApplicationSubmitted, ClientKind
from shared.settings import KafkaSettings
from tests.factories import application_body
from tests.support import consume, issue_key, running, topic_names, wait_until


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Tansu]]:
    """Tansu processes this test starts itself (stopped at the end, whatever happened)."""
    started: list[Tansu] = []
    yield started
    for broker in started:
        broker.stop()


def headers(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def cases(engine: object) -> list[Case]:
    with Session(engine) as session:  # type: ignore[call-overload]
        return list(session.exec(select(Case)).all())


async def test_broker_down_answers_503_and_recovers_without_restart(
    brokers: list[Tansu], tmp_path: Path
) -> None:
    first = Tansu(log_path=tmp_path / "tansu-1.log").start()
    brokers.append(first)
    # The producer gives an event up after its request timeout (10 s); intake waits longer (11 s), so the 503
    # here is definitive: the producer will never deliver that event.
    kafka = KafkaSettings(bootstrap_servers=first.bootstrap, partitions=2, dlq_backoff_s=0.01)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka, publish_timeout_s=11.0)
    service, app = build(settings)
    async with running(service, app) as client:
        _, key = await issue_key(kafka, ClientKind.PORTAL, service=service)
        ok = await client.post("/v1/applications", json=application_body(), headers=headers(key))
        assert ok.status_code == 202, ok.text

        first.stop()
        down = await client.post("/v1/applications", json=application_body(), headers=headers(key))
        assert down.status_code == 503, down.text
        assert down.headers["content-type"] == "application/problem+json"
        assert down.json()["type"] == "urn:ozg:problem:broker-unavailable"
        assert int(down.headers["retry-after"]) > 0
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"] is False
        # Nothing half-accepted: only the first case exists.
        assert [c.case_id for c in cases(service.engine)] == [uuid.UUID(ok.json()["case_id"])]

        # A new, empty broker on the same port: intake recreates its topics and accepts again.
        brokers.append(Tansu(port=first.port, log_path=tmp_path / "tansu-2.log").start())
        again = await client.post("/v1/applications", json=application_body(), headers=headers(key))
        assert again.status_code == 202, again.text
        # All of intake's topics are back, not only the one a produce request would auto-create.
        assert {spec.name for spec in service.topic_specs} <= await topic_names(kafka)
        # The refused application never reaches the broker later: whatever is there belongs to accepted cases.
        accepted = {str(c.case_id).encode() for c in cases(service.engine)}
        assert len(accepted) == 2
        seen: set[bytes] = set()
        await consume(kafka, topics.SUBMITTED, 1,
                      predicate=lambda r: seen.add(r.key or b"") is None and r.key == again.json()["case_id"].encode())
        assert seen <= accepted

        async def ready_again() -> bool:
            return (await client.get("/health/ready")).status_code == 200

        await wait_until(ready_again)


async def test_publish_is_bounded_by_the_publish_timeout(
    brokers: list[Tansu], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Tansu(log_path=tmp_path / "tansu.log").start()
    brokers.append(broker)
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, partitions=2)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka)
    service, app = build(settings)
    never = asyncio.Event()

    async def hanging_publish(*_args: object, **_kwargs: object) -> None:
        await never.wait()

    async with running(service, app) as client:
        _, key = await issue_key(kafka, ClientKind.PORTAL, service=service)
        monkeypatch.setattr(publishing, "publish", hanging_publish)
        # A short limit for the test; the producer would hold the event longer than that.
        monkeypatch.setattr(app.state.intake.publisher, "_timeout_s", 0.5)
        response = await client.post("/v1/applications", json=application_body(), headers=headers(key))
        assert response.status_code == 503
        assert "same Idempotency-Key" in response.json()["detail"]
        # The producer may still deliver it: the case stays pending for the outbox, invisible to the portal.
        [case] = cases(service.engine)
        assert case.state == CaseState.PENDING
        status = await client.get(f"/v1/applications/{case.case_id}", headers=headers(key))
        assert status.status_code == 404


async def test_same_key_in_flight_twice_answers_409(
    tmp_path: Path, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings)
    service, app = build(settings)
    entered, release = asyncio.Event(), asyncio.Event()
    real_publish = publishing.publish

    async def slow_publish(*args: object, **kwargs: object) -> None:
        entered.set()
        await release.wait()
        await real_publish(*args, **kwargs)  # type: ignore[arg-type]

    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        monkeypatch.setattr(publishing, "publish", slow_publish)
        body, idem = application_body(), str(uuid.uuid4())
        first = asyncio.create_task(client.post("/v1/applications", json=body, headers=headers(key, idem)))
        await asyncio.wait_for(entered.wait(), 20)
        second = await client.post("/v1/applications", json=body, headers=headers(key, idem))
        assert second.status_code == 409
        assert second.json()["type"] == "urn:ozg:problem:idempotency-key-in-flight"
        assert "retry-after" in second.headers
        release.set()
        answer: httpx.Response = await first
        assert answer.status_code == 202
        # Once accepted, the same request is a replay with the same answer.
        replay = await client.post("/v1/applications", json=body, headers=headers(key, idem))
        assert replay.status_code == 202
        assert replay.json() == answer.json()


async def test_outbox_publishes_a_case_left_pending(
    tmp_path: Path, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka_settings)
    service, app = build(settings)

    async with running(service, app) as client:
        _, key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        store = app.state.intake.store
        publisher = app.state.intake.publisher

        async def crash(_case: Case) -> Case:
            raise RuntimeError("the process dies between the acknowledgement and the acceptance")

        with monkeypatch.context() as patch:
            patch.setattr(app.state.intake.writer, "accept", crash)
            with pytest.raises(RuntimeError):
                await client.post("/v1/applications", json=application_body(), headers=headers(key))
        [pending] = cases(service.engine)
        assert pending.state == CaseState.PENDING
        assert pending.submission is not None
        # Younger than the threshold: left alone (its request may still be waiting for the broker).
        assert await republish_pending(store, publisher, older_than_s=3600) == 0
        two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
        with Session(service.engine) as session:
            row = session.get_one(Case, pending.case_id)
            row.submitted_at = two_hours_ago
            session.add(row)
            session.commit()
        assert store.pending_backlog() == (1, two_hours_ago)
        assert await republish_pending(store, publisher, older_than_s=3600) == 1
        assert await republish_pending(store, publisher, older_than_s=3600) == 0
        assert store.pending_backlog() == (0, None)

        [accepted] = cases(service.engine)
        assert accepted.state == CaseState.ACCEPTED
        assert accepted.submission is None  # personal data does not linger in the outbox
        # Published twice (before the crash and by the outbox) with one event id: consumers drop the repeat.
        records = await consume(kafka_settings, topics.SUBMITTED, 2,
                                predicate=lambda r: r.key == str(pending.case_id).encode())
        envelopes = [parse_event(r.headers, r.value, r.key) for r in records]
        assert {e.id for e in envelopes} == {pending.event_id}
        # The outbox sends the very bytes the request sent: the submission is serialised once and kept.
        assert records[1].value == records[0].value
        assert envelopes[1].time == envelopes[0].time
        assert envelopes[1].data_as(ApplicationSubmitted).reference == pending.reference
        status = await client.get(f"/v1/applications/{pending.case_id}", headers=headers(key))
        assert status.status_code == 200
        assert status.json()["status"] == "submitted"
