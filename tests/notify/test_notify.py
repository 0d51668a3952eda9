"""The notify service end to end against real parts: the Tansu broker, an SMTP server, SQLite and PostgreSQL.

The broker and the ``ozg-notify`` consumer group live for the whole session, so each test uses fresh case ids
and counts only the mail and events of its own cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from aiokafka import ConsumerRecord

from deploy.local.broker import free_port
from services.notify.app import build
from services.notify.handlers import parked_event
from services.notify.settings import Settings
from services.notify.store import NotifyStore
from shared import events, topics
from shared.db import make_engine
from shared.envelope import OutgoingEvent, build_event, derived_event_id, parse_event
from shared.events import (
    Applicant,
    ApplicationRouted,
    ApplicationSubmitted,
    ApplicationUnroutable,
    Authority,
    AuthorityLevel,
    CaseStatus,
    CaseStatusChanged,
    ClientKind,
    Contact,
    NotificationOutcome,
    Outcome,
    PostalAddress,
    Region,
    ReplyChannel,
    ResolvedRegion,
    UnroutableReason,
)
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.notify.conftest import Mailbox, Received
from tests.support import consume, issue_key, produce, running, wait_until

WOHNGELD = "99107023037000"
GEWERBE = "99050012104000"
STATUS_BASE = "http://127.0.0.1:8001/v1/applications"


class Case:
    """A made-up case: ids, the applicant, and a form value that must never reach a message."""

    def __init__(self, *, language: str = "de", channel: ReplyChannel = ReplyChannel.EMAIL,
                 leika_key: str = WOHNGELD) -> None:
        self.case_id = uuid.uuid4()
        self.reference = f"OZG-2026-{secrets.token_hex(2).upper()}-{secrets.token_hex(2).upper()}"
        self.language = language
        self.channel = channel
        self.leika_key = leika_key
        self.email = f"applicant-{self.case_id.hex[:8]}@example.org"
        self.name = "Erika Mustermann"
        self.postfach_id = f"postfach-{self.case_id.hex[:8]}"
        self.street = f"Donaupark {secrets.randbelow(900) + 100}"
        self.form_secret = f"FORMDATA-{secrets.token_hex(8)}"

    def submitted(self) -> OutgoingEvent:
        contact = {
            ReplyChannel.EMAIL: Contact(email=self.email),
            ReplyChannel.POSTFACH: Contact(postfach_id=self.postfach_id),
            ReplyChannel.LETTER: Contact(
                address=PostalAddress(street=self.street, postal_code="93309", city="Kelheim")
            ),
        }[self.channel]
        data = ApplicationSubmitted(
            case_id=self.case_id, reference=self.reference, leika_key=self.leika_key,
            region=Region(ars="092730137137"),
            applicant=Applicant(name=self.name, contact=contact, reply_channel=self.channel,
                                language=self.language),
            form={"monthly_income": self.form_secret}, client_id=uuid.uuid4(), client_kind=ClientKind.PORTAL,
            submitted_at=datetime.now(UTC),
        )
        return self._event(events.SUBMITTED_V1, "/ozg/intake", data)

    def routed(self, authority: str = "Landratsamt Kelheim") -> OutgoingEvent:
        data = ApplicationRouted(
            case_id=self.case_id, reference=self.reference, leika_key=self.leika_key,
            region=ResolvedRegion(ars="092730137137", ags="09273137", name="Kelheim, St"),
            authority=Authority(ars="09273", name=authority, level=AuthorityLevel.KREIS),
            rule="BY:kreis", destination_id=uuid.uuid4(), destination_name="Wohngeldstelle",
        )
        return self._event(events.ROUTED_V1, "/ozg/routing", data)

    def unroutable(self) -> OutgoingEvent:
        data = ApplicationUnroutable(
            case_id=self.case_id, reference=self.reference, leika_key=self.leika_key,
            reason=UnroutableReason.NO_DESTINATION, detail="no destination registered",
        )
        return self._event(events.UNROUTABLE_V1, "/ozg/routing", data)

    def status(self, status: CaseStatus, **fields: Any) -> OutgoingEvent:
        data = CaseStatusChanged(case_id=self.case_id, reference=self.reference, status=status,
                                 changed_at=datetime.now(UTC), **fields)
        return self._event(events.STATUS_CHANGED_V1, "/ozg/routing", data)

    def _event(self, event_type: str, source: str, data: Any) -> OutgoingEvent:
        return build_event(event_type=event_type, source=source, subject=str(self.case_id), data=data)


async def send(kafka: KafkaSettings, topic: str, event: OutgoingEvent) -> None:
    """Publish a hand-made event as its producer would."""
    await produce(kafka, topic, event.value, headers=event.headers, key=event.key)


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    """One header of a record, decoded."""
    for key, value in record.headers:
        if key == name:
            return bytes(value).decode()
    return None


async def outcomes(kafka: KafkaSettings, case: Case, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records notify published on ``ozg.notifications`` for ``case``."""
    return await consume(kafka, topics.NOTIFICATIONS, count,
                         predicate=lambda r: header(r, "ce_subject") == str(case.case_id))


async def mail_about(mailbox: Mailbox, reference: str, count: int = 1) -> list[Received]:
    """Wait until ``count`` messages about ``reference`` arrived."""
    await wait_until(lambda: len(mailbox.about(reference)) >= count)
    return mailbox.about(reference)


@contextlib.asynccontextmanager
async def notify(
    kafka: KafkaSettings, database_url: str, smtp_port: int, **overrides: Any
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A notify service running in-process against the real broker and SMTP server."""
    settings = Settings(database_url=database_url, smtp_port=smtp_port, kafka=kafka, status_base_url=STATUS_BASE,
                        log_json=False, **overrides)
    service, app = build(settings)
    async with running(service, app) as client:
        yield service, client


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'notify.db'}"


def assert_no_personal_data(record: ConsumerRecord[bytes, bytes], case: Case) -> None:
    raw = record.value + b"".join(value for _, value in record.headers)
    for secret in (case.email, case.name, case.form_secret, case.postfach_id, case.street):
        assert secret.encode() not in raw


async def test_receipt_routing_and_status_mails_in_german(
    database_url: str, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """The main flow, on SQLite and PostgreSQL: receipt, routed, information requested, decided."""
    case = Case()
    async with notify(kafka_settings, database_url, mailbox.port) as (service, client):
        submitted = case.submitted()
        await send(kafka_settings, topics.SUBMITTED, submitted)

        [receipt] = await mail_about(mailbox, case.reference)
        assert receipt.rcpt_tos == [case.email]
        assert case.email in str(receipt.message["To"])
        assert "Eingangsbestätigung" in receipt.subject
        assert "Wohngeld (Mietzuschuss)" in receipt.body
        assert case.reference in receipt.body
        assert "Guten Tag Erika Mustermann" in receipt.body
        assert f"{STATUS_BASE}/{case.case_id}" in receipt.body
        assert receipt.message["Auto-Submitted"] == "auto-generated"
        assert case.form_secret not in receipt.message.as_string()

        [record] = await outcomes(kafka_settings, case, 1)
        envelope = parse_event(record.headers, record.value, record.key)
        assert envelope.type == events.NOTIFICATION_SENT_V1, str(envelope.data)
        assert envelope.source == "/ozg/notify"
        assert envelope.subject == str(case.case_id)
        assert record.key == str(case.case_id).encode()
        outcome = envelope.data_as(NotificationOutcome)
        assert outcome.notification_id == uuid.UUID(derived_event_id(submitted.event_id, "notification"))
        assert outcome.trigger_event_id == submitted.event_id
        assert outcome.trigger_type == events.SUBMITTED_V1
        assert outcome.channel is ReplyChannel.EMAIL
        assert outcome.attempts == 1
        assert outcome.error is None
        assert_no_personal_data(record, case)

        # Routed only after the receipt went out: records of different topics are consumed in no fixed order.
        await send(kafka_settings, topics.ROUTED, case.routed("Landratsamt Kelheim"))
        routed = (await mail_about(mailbox, case.reference, 2))[1]
        assert "Landratsamt Kelheim" in routed.subject
        assert "Landratsamt Kelheim" in routed.body

        await send(kafka_settings, topics.CASE_STATUS,
                   case.status(CaseStatus.INFORMATION_REQUESTED, message="Bitte reichen Sie den Mietvertrag nach."))
        asked = (await mail_about(mailbox, case.reference, 3))[2]
        assert "Weitere Angaben erforderlich" in asked.subject
        assert "Bitte reichen Sie den Mietvertrag nach." in asked.body
        # The authority learnt from the routed event is named in later messages too.
        assert "Landratsamt Kelheim" in asked.body

        await send(kafka_settings, topics.CASE_STATUS,
                   case.status(CaseStatus.DECIDED, outcome=Outcome.APPROVED, message="Der Bescheid folgt per Post."))
        decided = (await mail_about(mailbox, case.reference, 4))[3]
        assert "Ihr Antrag wurde bewilligt." in decided.body
        assert "Der Bescheid folgt per Post." in decided.body

        records = await outcomes(kafka_settings, case, 4)
        assert {header(r, "ce_type") for r in records} == {events.NOTIFICATION_SENT_V1}

        _, operator_key = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        answer = await client.get("/v1/notifications", params={"case_id": str(case.case_id)},
                                  headers={"Authorization": f"Bearer {operator_key}"})
        assert answer.status_code == 200
        listed = answer.json()
        assert [item["trigger_type"] for item in listed] == [
            events.SUBMITTED_V1, events.ROUTED_V1, events.STATUS_CHANGED_V1, events.STATUS_CHANGED_V1,
        ]
        assert {item["status"] for item in listed} == {"sent"}
        assert case.email not in answer.text
        assert case.name not in answer.text

        metrics = (await client.get("/metrics")).text
        assert 'ozg_notifications_total{channel="email",outcome="sent"}' in metrics


async def test_english_applicant_gets_english_text(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """language=en: English subject and body, the service named in English, still formal."""
    case = Case(language="en", leika_key=GEWERBE)
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        [receipt] = await mail_about(mailbox, case.reference)
        assert receipt.subject.startswith("Acknowledgement of receipt")
        assert "Business registration" in receipt.subject
        assert "Dear Erika Mustermann" in receipt.body
        assert "Eingangsbestätigung" not in receipt.body
        assert receipt.message["Content-Language"] == "en"

        await send(kafka_settings, topics.UNROUTABLE, case.unroutable())
        delayed = (await mail_about(mailbox, case.reference, 2))[1]
        assert "delayed" in delayed.subject
        assert "clearing office" in delayed.body


async def test_redelivered_event_sends_nothing_new(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """The same ce_id twice: one mail, one notification, one outcome event.

    A later event of the case on the same topic (so the same partition, after the redelivery) is the sentinel:
    once its mail is here, the redelivery was processed, and it sent and published nothing.
    """
    case = Case()
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port) as (service, client):
        submitted = case.submitted()
        await send(kafka_settings, topics.SUBMITTED, submitted)
        await mail_about(mailbox, case.reference)
        await send(kafka_settings, topics.SUBMITTED, submitted)
        sentinel = case.submitted()
        await send(kafka_settings, topics.SUBMITTED, sentinel)
        await mail_about(mailbox, case.reference, 2)

        records = await outcomes(kafka_settings, case, 2)
        triggers = [parse_event(r.headers, r.value).data_as(NotificationOutcome).trigger_event_id for r in records]
        assert sorted(triggers) == sorted([submitted.event_id, sentinel.event_id])
        assert len(mailbox.about(case.reference)) == 2

        _, operator_key = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        answer = await client.get("/v1/notifications", params={"case_id": str(case.case_id)},
                                  headers={"Authorization": f"Bearer {operator_key}"})
        assert [item["trigger_event_id"] for item in answer.json()] == [submitted.event_id, sentinel.event_id]
        assert [item["attempts"] for item in answer.json()] == [1, 1]


async def test_poison_messages_are_dead_lettered_and_the_consumer_keeps_going(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Invalid JSON, missing CloudEvents headers, an unknown type: all to the .dlq; a later event still works."""
    case = Case()
    # One key for everything, so the poison records sit in the valid event's partition, before it.
    key = str(case.case_id).encode()
    bad_json_id = str(uuid.uuid4())
    unknown_type_id = str(uuid.uuid4())
    marker = secrets.token_hex(8)
    ce_headers = {
        "ce_specversion": "1.0", "ce_source": "/ozg/intake", "ce_subject": str(case.case_id),
        "content-type": "application/json",
    }
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port):
        await produce(kafka_settings, topics.SUBMITTED, b'{"case_id": ',
                      headers={**ce_headers, "ce_id": bad_json_id, "ce_type": events.SUBMITTED_V1}, key=key)
        await produce(kafka_settings, topics.SUBMITTED, b"{}", headers={"x-test-marker": marker}, key=key)
        await produce(kafka_settings, topics.SUBMITTED, b'{"hello": "world"}',
                      headers={**ce_headers, "ce_id": unknown_type_id, "ce_type": "de.ozg.unknown.v1"}, key=key)
        await send(kafka_settings, topics.SUBMITTED, case.submitted())

        await mail_about(mailbox, case.reference)
        dead = await consume(
            kafka_settings, topics.dlq_topic(topics.SUBMITTED), 3,
            predicate=lambda r: header(r, "ce_id") in (bad_json_id, unknown_type_id)
            or header(r, "x-test-marker") == marker,
        )
        assert {header(r, "x-ozg-dlq-error") for r in dead} == {"InvalidEvent"}
        assert {header(r, "x-ozg-dlq-consumer") for r in dead} == {"notify"}
        assert {r.value for r in dead} == {b'{"case_id": ', b"{}", b'{"hello": "world"}'}


async def test_an_event_parked_after_its_contact_came_is_not_left_behind(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Another replica parks the routed event just after this one handled the submitted event and looked at the
    parked events (or the process stopped before unparking): the scheduler handles it once its grace is over."""
    case = Case()
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port, parked_grace_s=0.2,
                      scheduler_interval_s=0.05) as (service, _):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        await mail_about(mailbox, case.reference)
        routed = case.routed()
        envelope = parse_event([(k, v.encode()) for k, v in routed.headers.items()], routed.value)
        store = NotifyStore(service.engine)
        await anyio.to_thread.run_sync(store.park, parked_event(envelope, case.case_id))
        received = await mail_about(mailbox, case.reference, 2)
        assert len(received) == 2
        await wait_until(lambda: store.parked(case.case_id) == [])
        await send(kafka_settings, topics.ROUTED, routed)  # read later all the same: still one message
        await wait_until(lambda: store.processed(routed.event_id))
        assert len(mailbox.about(case.reference)) == 2


async def test_an_event_that_overtakes_its_submitted_event_waits_for_it(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Routed arrives before submitted (different topics, no order between them): it is parked, not lost, and
    its message follows the receipt once the contact is known."""
    case = Case()
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port):
        routed = case.routed()
        await send(kafka_settings, topics.ROUTED, routed)
        await send(kafka_settings, topics.ROUTED, routed)  # redelivered while parked: still one message
        with pytest.raises(AssertionError):
            await consume(kafka_settings, topics.dlq_topic(topics.ROUTED), 1, timeout_s=3,
                          predicate=lambda r: header(r, "ce_id") == routed.event_id)
        assert mailbox.about(case.reference) == []
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        await wait_until(lambda: len(mailbox.about(case.reference)) >= 2)
        await asyncio.sleep(1)
        mails = mailbox.about(case.reference)
        assert len(mails) == 2
        assert "Eingangsbestätigung" in mails[0].subject


async def test_notifications_api_needs_the_operator_scope(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """401 without a key, 403 with a portal key, 200 with an operator key; 404 for an unknown case.

    The applicant chose the Postfach, which this instance has no URL for: recorded and reported as failed.
    """
    case = Case(channel=ReplyChannel.POSTFACH)
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port) as (service, client):
        submitted = case.submitted()
        await send(kafka_settings, topics.SUBMITTED, submitted)
        [record] = await outcomes(kafka_settings, case, 1)
        assert header(record, "ce_type") == events.NOTIFICATION_FAILED_V1
        outcome = parse_event(record.headers, record.value).data_as(NotificationOutcome)
        assert outcome.channel is ReplyChannel.POSTFACH
        assert outcome.error == "postfach not configured"
        assert outcome.attempts == 1

        url, params = "/v1/notifications", {"case_id": str(case.case_id)}
        anonymous = await client.get(url, params=params)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")

        _, portal_key = await issue_key(kafka_settings, ClientKind.PORTAL, service=service)
        forbidden = await client.get(url, params=params, headers={"Authorization": f"Bearer {portal_key}"})
        assert forbidden.status_code == 403

        _, operator_key = await issue_key(kafka_settings, ClientKind.OPERATOR, service=service)
        operator = {"Authorization": f"Bearer {operator_key}"}
        answer = await client.get(url, params=params, headers=operator)
        assert answer.status_code == 200
        [item] = answer.json()
        assert item["notification_id"] == str(outcome.notification_id)
        assert item["channel"] == "postfach"
        assert item["status"] == "failed"
        assert item["error"] == "postfach not configured"
        assert item["sent_at"] is None

        unknown = await client.get(url, params={"case_id": str(uuid.uuid4())}, headers=operator)
        assert unknown.status_code == 404
        assert unknown.json()["type"] == "urn:ozg:problem:not-found"
        malformed = await client.get(url, params={"case_id": "not-a-uuid"}, headers=operator)
        assert malformed.status_code == 422
        assert (await client.get(url, headers=operator)).status_code == 422


async def test_unreachable_smtp_server_records_a_failed_notification(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    """Nothing listens on the SMTP port: the temporary failure is retried from the schedule, then reported failed."""
    case = Case()
    async with notify(kafka_settings, sqlite_url(tmp_path), free_port(), max_attempts=2, retry_backoff_s=0.01,
                      scheduler_interval_s=0.05):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        [record] = await outcomes(kafka_settings, case, 1)
        assert header(record, "ce_type") == events.NOTIFICATION_FAILED_V1
        outcome = parse_event(record.headers, record.value).data_as(NotificationOutcome)
        assert outcome.attempts == 2
        assert outcome.error is not None
        assert outcome.error.startswith("SMTPConnect")
        assert_no_personal_data(record, case)


async def test_status_events_announced_elsewhere_send_nothing(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Status-changed events for statuses that have their own events (submitted, routed) are consumed silently."""
    case = Case()
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        await mail_about(mailbox, case.reference)
        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.SUBMITTED))
        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.ROUTED))
        # Same partition (same key), after the silent ones: once its mail is here, they were handled.
        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.CLOSED))
        messages = await mail_about(mailbox, case.reference, 2)
        assert len(messages) == 2
        assert "Verfahren abgeschlossen" in messages[1].subject


async def test_nothing_more_is_said_about_a_case_that_ended(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """A withdrawal that overtook routing's decision: the routed event read afterwards sends no "your case is with"
    mail after the withdrawal was confirmed, and is still consumed (not parked, not dead-lettered)."""
    case = Case()
    url = sqlite_url(tmp_path)
    async with notify(kafka_settings, url, mailbox.port):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.WITHDRAWN))
        receipt, withdrawn = await mail_about(mailbox, case.reference, 2)
        routed = case.routed()
        await send(kafka_settings, topics.ROUTED, routed)
        store = NotifyStore(make_engine(url))
        await wait_until(lambda: store.processed(routed.event_id))
        await asyncio.sleep(0.5)  # a mail, were one sent, leaves right after the event is recorded
        assert mailbox.about(case.reference) == [receipt, withdrawn]
        assert store.parked(case.case_id) == []


async def test_a_withdrawal_routing_refused_is_set_right(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Intake confirmed a withdrawal against a copy of the status that lagged behind a decision; routing refused it
    (decided, previous_status withdrawn). The applicant learns that the withdrawal came too late, the case is no
    longer ended, and what follows is told again."""
    case = Case()
    url = sqlite_url(tmp_path)
    async with notify(kafka_settings, url, mailbox.port):
        store = NotifyStore(make_engine(url))
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.WITHDRAWN))
        await mail_about(mailbox, case.reference, 2)
        assert store.contact(case.case_id).ended_at is not None  # type: ignore[union-attr]

        await send(kafka_settings, topics.CASE_STATUS,
                   case.status(CaseStatus.DECIDED, previous_status=CaseStatus.WITHDRAWN))
        refused = (await mail_about(mailbox, case.reference, 3))[2]
        assert "Rücknahme nicht mehr möglich" in refused.subject
        assert "bereits entschieden" in refused.body
        contact = store.contact(case.case_id)
        assert contact is not None
        assert contact.ended_at is None  # the retention clock waits for the case's real end

        await send(kafka_settings, topics.CASE_STATUS, case.status(CaseStatus.CLOSED))
        closed = (await mail_about(mailbox, case.reference, 4))[3]
        assert "Verfahren abgeschlossen" in closed.subject
