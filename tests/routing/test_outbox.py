"""Routing's outbox: a status change whose event could not be published is published later, with its own id."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import ConsumerRecord
from sqlmodel import Session, select

from deploy.local.broker import Tansu
from services.routing import publishing
from services.routing.app import build
from services.routing.settings import Settings
from shared import topics
from shared.envelope import parse_event
from shared.events import CaseStatus, CaseStatusChanged
from shared.outbox import OutboxEntry
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.routing.test_status import add_case, bearer, body_for, destination_key, status_of
from tests.support import consume, running, wait_until

S = CaseStatus


@pytest.fixture
def brokers() -> Iterator[list[Tansu]]:
    """Tansu processes this test starts itself (stopped at the end, whatever happened)."""
    started: list[Tansu] = []
    yield started
    for broker in started:
        broker.stop()


def outbox(engine: object) -> list[OutboxEntry]:
    with Session(engine) as session:  # type: ignore[call-overload]
        return list(session.exec(select(OutboxEntry).order_by(OutboxEntry.seq)).all())


def backlog(service: Service) -> float | None:
    """The routing outbox's backlog as /metrics shows it."""
    return service.registry.get_sample_value("ozg_outbox_unsent", {"service": "routing"})


def first_of_each(case_id: uuid.UUID) -> Callable[[ConsumerRecord[bytes, bytes]], bool]:
    """A record filter that passes the first record of each event id of the case."""
    seen: set[bytes] = set()

    def first(record: ConsumerRecord[bytes, bytes]) -> bool:
        event_id = dict(record.headers)["ce_id"]
        if record.key != str(case_id).encode() or event_id in seen:
            return False
        seen.add(event_id)
        return True

    return first


async def test_a_change_made_while_the_broker_is_down_is_published_when_it_is_back(
    brokers: list[Tansu], tmp_path: Path, database_url: str
) -> None:
    first = Tansu(log_path=tmp_path / "tansu-1.log").start()
    brokers.append(first)
    kafka = KafkaSettings(bootstrap_servers=first.bootstrap, partitions=2, dlq_backoff_s=0.01)
    settings = Settings(database_url=database_url, kafka=kafka, status_publish_timeout_s=1.0,
                        outbox_interval_s=0.2, outbox_after_s=0)
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka, service, destination)
        case_id = add_case(service, destination)
        url = f"/v1/cases/{case_id}/status"

        first.stop()
        answers = [await client.post(url, json=body_for(new), headers=bearer(key))
                   for new in (S.RECEIVED, S.IN_PROGRESS)]
        # As documented: the change is stored and answered 202, its event not yet published.
        assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
        assert [a.json()["published"] for a in answers] == [False, False]
        assert status_of(service, case_id) == S.IN_PROGRESS
        event_ids = [a.json()["event_id"] for a in answers]
        assert [e.event_id for e in outbox(service.engine)] == event_ids
        assert all(e.sent_at is None for e in outbox(service.engine))
        # Operators see the backlog and how long its oldest event has waited (the OzgOutboxStuck alert).
        await wait_until(lambda: backlog(service) == 2, timeout_s=30)
        await wait_until(lambda: (service.registry.get_sample_value(
            "ozg_outbox_oldest_unsent_age_seconds", {"service": "routing"}) or 0) > 0.2)

        # A new, empty broker on the same port: the sweep recreates the topics and publishes, in order.
        brokers.append(Tansu(port=first.port, log_path=tmp_path / "tansu-2.log").start())
        await wait_until(lambda: all(e.sent_at is not None for e in outbox(service.engine)), timeout_s=60)
        # The producer may deliver the event it held when the time ran out as well: a repeat with the same id,
        # which consumers drop. What counts is each id's first appearance, in order.
        records = await consume(kafka, topics.CASE_STATUS, 2, predicate=first_of_each(case_id))
        envelopes = [parse_event(r.headers, r.value, r.key) for r in records]
        assert [e.id for e in envelopes] == event_ids
        assert [e.data_as(CaseStatusChanged).status for e in envelopes] == [S.RECEIVED, S.IN_PROGRESS]
        await wait_until(lambda: backlog(service) == 0)
        assert service.registry.get_sample_value("ozg_outbox_oldest_unsent_age_seconds", {"service": "routing"}) == 0

        # With the broker back, a report is published before the answer.
        done = await client.post(url, json=body_for(S.INFORMATION_REQUESTED), headers=bearer(key))
        assert done.status_code == 202
        assert done.json()["published"] is True


async def test_an_event_left_unsent_by_a_crash_is_published_after_a_restart(
    tmp_path: Path, kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep would not touch an entry younger than an hour: only the restarted process's sweep does.
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'routing.db'}", kafka=kafka_settings,
                        outbox_interval_s=0.2, outbox_after_s=3600)
    service, app = build(settings)
    async with running(service, app) as client:
        destination = uuid.uuid4()
        key = await destination_key(kafka_settings, service, destination)
        case_id = add_case(service, destination)

        async def lost(*_args: object) -> None:
            # The process stops after the commit, before the broker has the event. (A SystemExit raised inside the
            # in-process app once left the test's event loop hanging; the real kill -9 is tests/resilience.)
            raise ConnectionError("the broker never gets the event")

        with monkeypatch.context() as patch:
            patch.setattr(publishing, "publish", lost)
            answer = await client.post(f"/v1/cases/{case_id}/status", json=body_for(S.RECEIVED),
                                       headers=bearer(key))
        assert answer.status_code == 202
        assert answer.json()["published"] is False
        assert status_of(service, case_id) == S.RECEIVED
        [entry] = outbox(service.engine)
        assert entry.sent_at is None

    restarted, restarted_app = build(settings.model_copy(update={"outbox_after_s": 0}))
    async with running(restarted, restarted_app):
        await wait_until(lambda: outbox(restarted.engine)[0].sent_at is not None)
        records = await consume(kafka_settings, topics.CASE_STATUS, 1, predicate=first_of_each(case_id))
        envelope = parse_event(records[0].headers, records[0].value, records[0].key)
        assert envelope.id == entry.event_id
        assert envelope.data_as(CaseStatusChanged).status == S.RECEIVED
