"""SPEC §9 "bad input" on Kafka: poison messages on every consumed topic of every service.

One table names each service's subscriptions; each (service, topic) gets every kind of poison record: invalid JSON,
no CloudEvents headers, a valid CloudEvent whose data breaks its model, a value longer than
``OZG_KAFKA_MAX_EVENT_BYTES``, a header value that is not UTF-8 and an event id longer than the tables keep. Each
must land in ``<topic>.dlq`` with the ``x-ozg-dlq-*`` headers and the original value, from that very consumer, and
a valid event sent after it (same key, so the same partition) must take effect.

The four services run in-process once for the whole module on a broker of its own; all records are sent up front,
and one reader collects every dead letter, so each case only waits for what concerns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlmodel import Session

from deploy.local.broker import Tansu
from services.audit.app import build as build_audit
from services.audit.models import ENTRIES
from services.audit.settings import Settings as AuditSettings
from services.intake.app import build as build_intake
from services.intake.settings import Settings as IntakeSettings
from services.intake.store import IntakeStore
from services.notify.app import build as build_notify
from services.notify.models import ParkedEvent
from services.notify.settings import Settings as NotifySettings
from services.notify.store import NotifyStore
from services.routing.app import build as build_routing
from services.routing.settings import Settings as RoutingSettings
from services.routing.store import RoutingStore
from shared import events, topics
from shared.auth import hash_key
from shared.clients import new_key
from shared.envelope import OutgoingEvent, build_event
from shared.events import (
    ApplicationDispatched,
    ApplicationRouted,
    ApplicationUnroutable,
    Authority,
    AuthorityLevel,
    CaseStatus,
    CaseStatusChanged,
    ClientKind,
    ClientRecord,
    NotificationOutcome,
    PersonalDataDeleted,
    ReplyChannel,
    ResolvedRegion,
    UnroutableReason,
)
from shared.idempotency import ProcessedEvent
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.conftest import QUICK_GROUPS
from tests.factories import WOHNSITZ, application_body, submitted
from tests.support import issue_key, running, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

DESTINATION = uuid.UUID("5f0c3a8e-2b7d-4e61-9c3a-7d2f1e0b9a44")
DESTINATION_TOPIC = topics.destination_topic(DESTINATION)
# Group joins and the audit's pattern subscription (metadata refresh) come first; the machine is shared.
ARRIVAL_S = 90

# What each service consumes: every subscriber of services/ and shared/ (each service follows ozg.clients).
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "intake": (topics.CLIENTS, topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS),
    "routing": (topics.CLIENTS, topics.SUBMITTED, topics.CASE_STATUS),
    "notify": (topics.CLIENTS, topics.SUBMITTED, topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS),
    # The pattern subscription: every ozg.* topic except dead letters, destination topics included.
    "audit": (topics.CLIENTS, topics.SUBMITTED, topics.ROUTED, topics.UNROUTABLE, topics.CASE_STATUS,
              topics.NOTIFICATIONS, topics.DELETIONS, DESTINATION_TOPIC),
}
# Audit has two subscribers of ozg.clients (its client directory and its trail): each dead-letters a poison record.
SUBSCRIBERS = {("audit", topics.CLIENTS): 2}
TOPICS = sorted({topic for consumed in SUBSCRIPTIONS.values() for topic in consumed})


def valid_event(topic: str) -> tuple[OutgoingEvent, uuid.UUID]:
    """A valid event of the kind ``topic`` carries, and the id a consumer's effect is found by (case or client)."""
    case = submitted(WOHNSITZ)
    routed = ApplicationRouted(
        case_id=case.case_id, reference=case.reference, leika_key=case.leika_key,
        region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
        authority=Authority(ars="09273", name="Landratsamt Kelheim", level=AuthorityLevel.KREIS),
        rule="default:kreis", destination_id=DESTINATION, destination_name="Landratsamt Kelheim",
    )
    data: Any
    if topic == topics.CLIENTS:
        client = ClientRecord(client_id=uuid.uuid4(), name="poison test", kind=ClientKind.PORTAL,
                              scopes=["applications:read"], key_hash=hash_key(new_key()),
                              issued_at=datetime.now(UTC))
        event = build_event(event_type=events.CLIENT_REGISTERED_V1, source="/ozg/clients-cli",
                            subject=str(client.client_id), data=client)
        return event, client.client_id
    event_type, data = {
        topics.SUBMITTED: (events.SUBMITTED_V1, case),
        topics.ROUTED: (events.ROUTED_V1, routed),
        topics.UNROUTABLE: (events.UNROUTABLE_V1, ApplicationUnroutable(
            case_id=case.case_id, reference=case.reference, leika_key=case.leika_key,
            reason=UnroutableReason.NO_DESTINATION, detail="no destination registered")),
        # A withdrawal: the one status routing's status consumer acts on (and records) itself.
        topics.CASE_STATUS: (events.STATUS_CHANGED_V1, CaseStatusChanged(
            case_id=case.case_id, reference=case.reference, status=CaseStatus.WITHDRAWN,
            previous_status=CaseStatus.SUBMITTED, changed_at=datetime.now(UTC))),
        topics.NOTIFICATIONS: (events.NOTIFICATION_SENT_V1, NotificationOutcome(
            notification_id=uuid.uuid4(), case_id=case.case_id, channel=ReplyChannel.EMAIL,
            trigger_event_id=str(uuid.uuid4()), trigger_type=events.SUBMITTED_V1, attempts=1)),
        topics.DELETIONS: (events.PERSONAL_DATA_DELETED_V1, PersonalDataDeleted(
            case_id=case.case_id, service="notify", categories=["contact"], deleted_at=datetime.now(UTC))),
        DESTINATION_TOPIC: (events.DISPATCHED_V1, ApplicationDispatched(
            case_id=case.case_id, reference=case.reference, destination_id=DESTINATION, routing=routed,
            application=case)),
    }[topic]
    return build_event(event_type=event_type, source="/test", subject=str(case.case_id), data=data), case.case_id


Headers = list[tuple[str, bytes | None]]


def encoded(event: OutgoingEvent, **changes: str) -> Headers:
    return [(name, value.encode()) for name, value in {**event.headers, **changes}.items()]


def poison(kind: str, event: OutgoingEvent, max_bytes: int) -> tuple[bytes, Headers]:
    """The value and headers of one poison record, made from a valid event of its topic."""
    fresh = {"ce_id": str(uuid.uuid4())}  # so no consumer takes it for a repeat of another record
    if kind == "invalid-json":
        return b'{"case_id": ', encoded(event, **fresh)
    if kind == "no-cloudevents-headers":
        return event.value, [("content-type", b"application/json")]
    if kind == "wrong-schema":
        return json.dumps({"case_id": SECRET, "name": SECRET}).encode(), encoded(event, **fresh)
    if kind == "huge-value":
        # The valid event itself, only longer (JSON allows the whitespace): too long is all that is wrong with it.
        return event.value + b" " * max_bytes, encoded(event, **fresh)
    if kind == "overlong-id":
        # Valid otherwise; longer than any table keeps an event id (on PostgreSQL an insert error, not a dead letter).
        return event.value, encoded(event, ce_id=f"{uuid.uuid4()}{'x' * 200}")
    if kind == "edge-time":
        # Valid ISO 8601, but before the first UTC time: converting it failed audit's whole batch, for ever.
        return event.value, encoded(event, ce_id=str(uuid.uuid4()), ce_time="0001-01-01T00:00:00+01:00")
    if kind == "non-utf8-header":
        headers: Headers = [(name, b"\xff\xfe" if name == "ce_id" else value) for name, value in encoded(event)]
        return event.value, [*headers, ("x-null", None)]
    raise AssertionError(kind)


# A value of the wrong-schema records that must never be echoed in a dead letter's reason.
SECRET = "Erika Mustermann, Kelheim"
# Each kind of poison, and what the dead letter's reason says about it.
REASONS = {
    "invalid-json": "must be a JSON object",
    "no-cloudevents-headers": "missing CloudEvents headers",
    "wrong-schema": "data does not match",
    "huge-value": "more than the limit",
    "non-utf8-header": "not UTF-8",
    "overlong-id": "ce_id is longer than 200",
    "edge-time": "outside the range of UTC times",
}
KINDS = tuple(REASONS)


@dataclass(frozen=True)
class Sent:
    """One poison record as the broker stored it, and the valid event sent right after it."""

    marker: bytes
    value: bytes
    partition: int
    offset: int
    valid: OutgoingEvent
    effect_id: uuid.UUID


@dataclass
class Backbone:
    """The four services running in-process, the records sent to them, and every dead letter read back."""

    services: dict[str, Service]
    sent: dict[tuple[str, str], Sent]
    dead: list[ConsumerRecord[bytes, bytes]]

    def dead_letters(self, sent: Sent, consumer: str) -> list[ConsumerRecord[bytes, bytes]]:
        return [r for r in self.dead if r.key == sent.marker and header(r, "x-ozg-dlq-consumer") == consumer]


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    return next((bytes(v).decode() for k, v in record.headers if k == name and v is not None), None)


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A broker of this module's own: the services read their topics from the beginning."""
    broker = Tansu(log_path=tmp_path_factory.mktemp("tansu-poison") / "tansu.log").start()
    yield broker
    broker.stop()


async def read_dead_letters(kafka: KafkaSettings, into: list[ConsumerRecord[bytes, bytes]]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False,
        metadata_max_age_ms=1000, max_partition_fetch_bytes=4 * kafka.max_event_bytes,
    )
    consumer.subscribe(pattern=r"^ozg\..*\.dlq$")
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                into.extend(records)
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def services(kafka: KafkaSettings, root: Path) -> AsyncIterator[dict[str, Service]]:
    built: dict[str, tuple[Service, FastAPI]] = {
        "intake": build_intake(IntakeSettings(database_url=f"sqlite:///{root / 'intake.db'}", kafka=kafka,
                                              blob_dir=root / "blobs", log_json=False)),
        "routing": build_routing(RoutingSettings(database_url=f"sqlite:///{root / 'routing.db'}", kafka=kafka,
                                                 log_json=False)),
        "notify": build_notify(NotifySettings(database_url=f"sqlite:///{root / 'notify.db'}", kafka=kafka,
                                              letter_dir=str(root / "letters"), smtp_port=1, log_json=False)),
        "audit": build_audit(AuditSettings(database_url=f"sqlite:///{root / 'audit.db'}", kafka=kafka,
                                           signing_key_file=root / "audit-key.pem", log_json=False)),
    }
    async with contextlib.AsyncExitStack() as stack:
        for service, app in built.values():
            await stack.enter_async_context(running(service, app))
        yield {name: service for name, (service, _) in built.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backbone(tansu: Tansu, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backbone]:
    kafka = KafkaSettings(bootstrap_servers=tansu.bootstrap, partitions=2, dlq_backoff_s=0.01, **QUICK_GROUPS)
    await topics.ensure_topics(kafka, [*topics.standard_topics(), *topics.destination_topic_specs(DESTINATION, kafka)])
    dead: list[ConsumerRecord[bytes, bytes]] = []
    reader = asyncio.create_task(read_dead_letters(kafka, dead))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all",
                                max_request_size=4 * kafka.max_event_bytes)
    await producer.start()
    try:
        async with services(kafka, tmp_path_factory.mktemp("poison")) as running_services:
            sent: dict[tuple[str, str], Sent] = {}
            for topic in TOPICS:
                for kind in KINDS:
                    marker = f"poison-{kind}-{uuid.uuid4().hex}".encode()
                    valid, effect_id = valid_event(topic)
                    value, headers = poison(kind, valid, kafka.max_event_bytes)
                    stored = await producer.send_and_wait(topic, value, key=marker, headers=headers)
                    await producer.send_and_wait(topic, valid.value, key=marker, headers=encoded(valid))
                    sent[topic, kind] = Sent(marker, value, stored.partition, stored.offset, valid, effect_id)
            yield Backbone(running_services, sent, dead)
    finally:
        await producer.stop()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def processed(engine: Engine, consumer: str, event_id: str) -> bool:
    with Session(engine) as session:
        return session.get(ProcessedEvent, (consumer, event_id)) is not None


def took_effect(backbone: Backbone, service_name: str, topic: str, sent: Sent) -> bool:
    """Whether ``service_name``'s consumer of ``topic`` has handled the valid event sent after the poison."""
    service = backbone.services[service_name]
    event_id = sent.valid.event_id
    if topic == topics.CLIENTS and service.clients.get(sent.effect_id) is None:
        return False
    if service_name == "audit":
        with service.engine.connect() as connection:
            return connection.execute(select(ENTRIES.c.seq).where(ENTRIES.c.event_id == event_id)).first() is not None
    if topic == topics.CLIENTS:
        return True
    if service_name == "intake":
        return processed(service.engine, IntakeStore.CONSUMER, event_id)
    if service_name == "routing":
        consumer = RoutingStore.CONSUMER if topic == topics.SUBMITTED else RoutingStore.STATUS_CONSUMER
        return processed(service.engine, consumer, event_id)
    # Notify parks an event whose case it does not know yet (its submitted event never came): handled, kept.
    with Session(service.engine) as session:
        return (processed(service.engine, NotifyStore.CONSUMER, event_id)
                or session.get(ParkedEvent, event_id) is not None)


CASES = [(service, topic, kind) for service, consumed in SUBSCRIPTIONS.items() for topic in consumed for kind in KINDS]


async def polled(predicate: Callable[[], Any]) -> Any:
    return await wait_until(predicate, timeout_s=ARRIVAL_S, interval_s=0.2)


@pytest.mark.parametrize(("service", "topic", "kind"), CASES, ids=["-".join(case) for case in CASES])
async def test_poison_is_dead_lettered_and_the_consumer_goes_on(
    backbone: Backbone, service: str, topic: str, kind: str
) -> None:
    sent = backbone.sent[topic, kind]
    expected = SUBSCRIBERS.get((service, topic), 1)
    dead = await polled(lambda: (found := backbone.dead_letters(sent, service)) and len(found) >= expected and found)
    assert len(dead) == expected
    for record in dead:
        assert record.topic == topics.dlq_topic(topic)
        assert record.value == sent.value
        assert header(record, "x-ozg-dlq-error") == "InvalidEvent"
        assert header(record, "x-ozg-dlq-topic") == topic
        assert header(record, "x-ozg-dlq-partition") == str(sent.partition)
        assert header(record, "x-ozg-dlq-offset") == str(sent.offset)
        reason = header(record, "x-ozg-dlq-reason")
        assert reason is not None
        assert REASONS[kind] in reason
        assert SECRET not in reason  # names fields and error types, never the input
    await polled(lambda: took_effect(backbone, service, topic, sent))
    # The valid event itself is no poison to anyone.
    assert not [r for r in backbone.dead if r.key == sent.marker and header(r, "ce_id") == sent.valid.event_id]


async def test_a_service_starts_with_a_too_long_record_at_the_end_of_ozg_clients(
    backbone: Backbone, tansu: Tansu, tmp_path: Path
) -> None:
    """A service is ready only once its client directory has read ozg.clients to the end; a record it dead-letters
    unread for its length must count as read, or the service would never become ready."""
    kafka = KafkaSettings(bootstrap_servers=tansu.bootstrap, partitions=2, dlq_backoff_s=0.01, **QUICK_GROUPS)
    valid, _ = valid_event(topics.CLIENTS)
    marker = f"last-{uuid.uuid4().hex}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all",
                                max_request_size=4 * kafka.max_event_bytes)
    await producer.start()
    try:
        # Nothing else writes to ozg.clients during this test: the record stays the last of its partition.
        await producer.send_and_wait(topics.CLIENTS, valid.value + b" " * kafka.max_event_bytes, key=marker,
                                     headers=encoded(valid))
    finally:
        await producer.stop()
    service, app = build_notify(NotifySettings(database_url=f"sqlite:///{tmp_path / 'notify.db'}", kafka=kafka,
                                               letter_dir=str(tmp_path / "letters"), smtp_port=1, log_json=False))
    async with running(service, app, timeout_s=ARRIVAL_S) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert service.clients.complete
    # Dead-lettered by this notify and by the module's own (the same consumer name).
    dead = await polled(lambda: len(found := [r for r in backbone.dead if r.key == marker
                                              and header(r, "x-ozg-dlq-consumer") == "notify"]) >= 2 and found)
    assert {header(r, "x-ozg-dlq-reason") for r in dead} == {
        f"the value has {len(valid.value) + kafka.max_event_bytes} bytes, more than the limit of "
        f"{kafka.max_event_bytes}"}


async def test_intake_refuses_an_application_whose_event_consumers_would_refuse(
    tansu: Tansu, tmp_path: Path
) -> None:
    """The producer's side of the size limit: intake answers 413 rather than publish an event too long for its
    consumers (half of OZG_KAFKA_MAX_EVENT_BYTES, leaving room for what routing adds when it dispatches)."""
    kafka = KafkaSettings(bootstrap_servers=tansu.bootstrap, partitions=2, max_event_bytes=2048, **QUICK_GROUPS)
    service, app = build_intake(IntakeSettings(database_url=f"sqlite:///{tmp_path / 'intake.db'}", kafka=kafka,
                                               blob_dir=tmp_path / "blobs", log_json=False))
    async with running(service, app) as client:
        _, key = await issue_key(kafka, ClientKind.PORTAL, service=service)
        body = application_body(WOHNSITZ)
        assert len(json.dumps(body).encode()) > 1024
        answer = await client.post("/v1/applications", json=body,
                                   headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "too-large"})
        assert answer.status_code == 413
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == "urn:ozg:problem:application-too-large"
        assert "Erika" not in answer.text
