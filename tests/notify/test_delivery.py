"""Delivery against real parts: retries from the persisted schedule (SMTP 451 → 250, Postfach 503 → 200), no
retry after a permanent failure (SMTP 550), a restart in between, letters as PDF, every message in German and
English through a real SMTP server, and the retention of contact data (SPEC §7)."""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
from pydantic import SecretStr
from pypdf import PdfReader
from sqlalchemy import update

from services.notify.models import Notification, NotificationPublic, NotificationStatus
from services.notify.store import NotifyStore
from shared import events, topics
from shared.db import make_engine, table_of
from shared.envelope import parse_event
from shared.events import CaseStatus, NotificationOutcome, Outcome, PersonalDataDeleted, ReplyChannel
from shared.runtime import Service
from shared.settings import KafkaSettings
from tests.notify.conftest import Mailbox, PostfachServer, ScriptedMailbox, smtp_server
from tests.notify.test_notify import (
    Case,
    assert_no_personal_data,
    header,
    mail_about,
    notify,
    outcomes,
    send,
    sqlite_url,
)
from tests.support import consume, wait_until

FAST_RETRIES = {"retry_backoff_s": 0.01, "scheduler_interval_s": 0.05}


def outcome_of(record: object) -> NotificationOutcome:
    return parse_event(record.headers, record.value).data_as(NotificationOutcome)  # type: ignore[attr-defined]


async def listed(service: Service, case: Case) -> list[NotificationPublic]:
    result = await anyio.to_thread.run_sync(NotifyStore(service.engine).for_case, case.case_id)
    assert result is not None
    return result


async def test_temporary_smtp_failure_is_retried_and_sent_exactly_once(
    database_url: str, kafka_settings: KafkaSettings
) -> None:
    """451 on the first DATA, 250 afterwards: one mail, one .sent event with two attempts (SQLite, PostgreSQL)."""
    case = Case()
    with smtp_server(ScriptedMailbox(data_replies=["451 4.3.0 Try again later"])) as box:
        assert isinstance(box, ScriptedMailbox)
        async with notify(kafka_settings, database_url, box.port, **FAST_RETRIES) as (service, _):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())
            [record] = await outcomes(kafka_settings, case, 1)
            assert header(record, "ce_type") == events.NOTIFICATION_SENT_V1
            first = outcome_of(record)
            assert first.attempts == 2
            assert first.error is None
            assert box.data_commands == 2
            assert len(box.about(case.reference)) == 1

            # A second message of the case is the sentinel: its outcome follows the first's on the same partition,
            # and the first one's outcome was not published again before it.
            await send(kafka_settings, topics.ROUTED, case.routed())
            records = await outcomes(kafka_settings, case, 2)
            assert [outcome_of(r).notification_id for r in records].count(first.notification_id) == 1
            assert len(box.about(case.reference)) == 2

            [receipt, _routed] = await listed(service, case)
            assert receipt.status == NotificationStatus.SENT
            assert receipt.attempts == 2
            assert receipt.next_attempt_at is None


async def test_permanent_smtp_failure_is_not_retried(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    """550 for the recipient: one .failed event after one attempt, nothing scheduled, nothing delivered."""
    case = Case()
    with smtp_server(ScriptedMailbox(rcpt_replies=["550 5.1.1 Mailbox unavailable"])) as box:
        assert isinstance(box, ScriptedMailbox)
        async with notify(kafka_settings, sqlite_url(tmp_path), box.port, **FAST_RETRIES) as (service, _):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())
            [record] = await outcomes(kafka_settings, case, 1)
            assert header(record, "ce_type") == events.NOTIFICATION_FAILED_V1
            outcome = outcome_of(record)
            assert outcome.attempts == 1
            assert outcome.error == "SMTPRecipientsRefused (550)"
            assert_no_personal_data(record, case)

            [failed] = await listed(service, case)
            assert failed.status == NotificationStatus.FAILED
            assert failed.next_attempt_at is None
            assert box.rcpt_commands == 1
            assert box.about(case.reference) == []


async def test_postfach_temporary_failure_then_success_delivers_once(
    tmp_path: Path, kafka_settings: KafkaSettings, postfach: PostfachServer, mailbox: Mailbox
) -> None:
    """The Postfach answers 503, then 201: one message in the Postfach, one .sent event with two attempts."""
    case = Case(channel=ReplyChannel.POSTFACH)
    postfach.script = [503]
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port, postfach_url=postfach.url,
                      postfach_token=SecretStr(postfach.token), **FAST_RETRIES):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        [record] = await outcomes(kafka_settings, case, 1)
        assert header(record, "ce_type") == events.NOTIFICATION_SENT_V1
        outcome = outcome_of(record)
        assert outcome.channel == ReplyChannel.POSTFACH
        assert outcome.attempts == 2
        assert_no_personal_data(record, case)

        requests = postfach.about(case.reference)
        assert [r.status for r in requests] == [503, 201]
        assert {r.headers["idempotency-key"] for r in requests} == {str(outcome.notification_id)}
        assert requests[1].body["postfach_id"] == case.postfach_id
        assert requests[1].body["subject"].startswith("Eingangsbestätigung")
        assert mailbox.about(case.reference) == []


async def test_an_interrupted_postfach_attempt_is_made_again_by_the_next_instance(
    tmp_path: Path, kafka_settings: KafkaSettings, postfach: PostfachServer, mailbox: Mailbox
) -> None:
    """The process stops while the Postfach has not answered: the Postfach recognises a repeat by its
    Idempotency-Key, so the next instance sends it (an e-mail would be failed instead: it may have gone out)."""
    case = Case(channel=ReplyChannel.POSTFACH)
    url = sqlite_url(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1/messages"
        async with notify(kafka_settings, url, mailbox.port, postfach_url=silent_url, postfach_timeout_s=60,
                          postfach_token=SecretStr(postfach.token), scheduler_interval_s=3600) as (service, _):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())

            async def under_way() -> bool:
                rows = await anyio.to_thread.run_sync(NotifyStore(service.engine).for_case, case.case_id)
                return bool(rows) and rows[0].status == NotificationStatus.SENDING

            await wait_until(under_way)
    # What SIGKILL would have left (a graceful stop records the broken connection as a temporary failure): the row
    # "sending" with the one attempt, its lease run out.
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(update(table_of(Notification)).values(
                status=NotificationStatus.SENDING, attempts=1, error=None,
                next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
        lapsed = NotifyStore(engine).lapsed(datetime.now(UTC))
    finally:
        engine.dispose()
    assert [channel for _, channel in lapsed] == [ReplyChannel.POSTFACH]

    async with notify(kafka_settings, url, mailbox.port, postfach_url=postfach.url,
                      postfach_token=SecretStr(postfach.token), **FAST_RETRIES):
        [record] = await outcomes(kafka_settings, case, 1)
        assert header(record, "ce_type") == events.NOTIFICATION_SENT_V1
        outcome = outcome_of(record)
        assert outcome.attempts == 2
        assert outcome.error is None
        [request] = postfach.about(case.reference)
        assert request.headers["idempotency-key"] == str(outcome.notification_id)


async def test_a_scheduled_retry_survives_a_restart(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    """The first instance fails temporarily and stops before retrying; a new one sends from the stored schedule."""
    case = Case()
    url = sqlite_url(tmp_path)
    with smtp_server(ScriptedMailbox(data_replies=["451 4.7.0 Greylisted"])) as box:
        # The first instance's scheduler sweeps once at start-up and then sleeps for an hour.
        async with notify(kafka_settings, url, box.port, retry_backoff_s=2, scheduler_interval_s=3600) as (
            service, _,
        ):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())

            async def scheduled() -> bool:
                rows = await anyio.to_thread.run_sync(NotifyStore(service.engine).for_case, case.case_id)
                return bool(rows) and rows[0].status == NotificationStatus.PENDING and rows[0].attempts == 1

            await wait_until(scheduled)
        assert box.about(case.reference) == []

        async with notify(kafka_settings, url, box.port, **FAST_RETRIES):
            [record] = await outcomes(kafka_settings, case, 1)
            assert header(record, "ce_type") == events.NOTIFICATION_SENT_V1
            assert outcome_of(record).attempts == 2
            assert len(box.about(case.reference)) == 1


def pdf_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pdf"))


async def test_letter_applicant_gets_a_pdf_in_the_outbox(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """reply_channel letter: the postal address is kept, and the letter PDF holds address, reference, subject."""
    case = Case(channel=ReplyChannel.LETTER)
    outbox = tmp_path / "letters"
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port, letter_dir=str(outbox)):
        await send(kafka_settings, topics.SUBMITTED, case.submitted())
        [record] = await outcomes(kafka_settings, case, 1)
        assert header(record, "ce_type") == events.NOTIFICATION_SENT_V1
        assert_no_personal_data(record, case)
        outcome = outcome_of(record)

    [path] = pdf_files(outbox)
    assert path.name == f"{case.reference}_{outcome.notification_id}.pdf"
    text = "\n".join(page.extract_text() for page in PdfReader(path).pages)
    assert f"{case.name}\n{case.street}\n93309 Kelheim" in text
    assert f"Aktenzeichen: {case.reference}" in text
    assert f"Eingangsbestätigung: Wohngeld (Mietzuschuss) – Aktenzeichen {case.reference}" in text
    assert case.form_secret not in text
    assert mailbox.about(case.reference) == []


async def test_a_letter_still_in_the_outbox_goes_with_the_contact_after_retention(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """A letter not yet taken by the printing software holds name and address: deleted with the contact, and the
    deletion says so; another case's letter stays. The round also removes a letter's temporary file that a crash
    left behind an hour ago."""
    closed, still_open = Case(channel=ReplyChannel.LETTER), Case(channel=ReplyChannel.LETTER)
    outbox = tmp_path / "letters"
    outbox.mkdir()
    crashed = outbox / ".x7_k2m9q.part"
    crashed.write_bytes(b"%PDF-1.7 half a letter")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(crashed, (two_hours_ago, two_hours_ago))
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port, letter_dir=str(outbox),
                      retention_days=1 / 86400, retention_interval_s=0.05):
        for case in (closed, still_open):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())
            await outcomes(kafka_settings, case, 1)
        await send(kafka_settings, topics.CASE_STATUS, closed.status(CaseStatus.CLOSED))
        [record] = await consume(kafka_settings, topics.DELETIONS, 1,
                                 predicate=lambda r: header(r, "ce_subject") == str(closed.case_id))
        deleted = parse_event(record.headers, record.value, record.key).data_as(PersonalDataDeleted)
        assert deleted.categories == ["name", "postal_address", "letters"]
    assert [p.name.split("_")[0] for p in pdf_files(outbox)] == [still_open.reference]
    assert not crashed.exists()


SUBJECTS = {
    "de": [
        "Eingangsbestätigung: Wohngeld (Mietzuschuss) – Aktenzeichen {ref}",
        "Ihr Antrag {ref}: Die Weiterleitung verzögert sich",
        "Ihr Antrag {ref}: zuständig ist Landratsamt Kelheim",
        "Ihr Antrag {ref}: Eingang bei der Behörde bestätigt",
        "Ihr Antrag {ref}: Ihr Antrag wird bearbeitet",
        "Ihr Antrag {ref}: Weitere Angaben erforderlich",
        "Ihr Antrag {ref}: Entscheidung über Ihren Antrag",
        "Ihr Antrag {ref}: Verfahren abgeschlossen",
        "Ihr Antrag {ref}: Antrag konnte nicht angenommen werden",
        "Ihr Antrag {ref}: Rücknahme Ihres Antrags bestätigt",
    ],
    "en": [
        "Acknowledgement of receipt: Housing benefit (Wohngeld) – reference {ref}",
        "Your application {ref}: forwarding is delayed",
        "Your application {ref} has been forwarded to Landratsamt Kelheim",
        "Your application {ref}: received by the authority",
        "Your application {ref}: your application is being processed",
        "Your application {ref}: further information needed",
        "Your application {ref}: decision on your application",
        "Your application {ref}: procedure closed",
        "Your application {ref}: application could not be accepted",
        "Your application {ref}: withdrawal confirmed",
    ],
}
# What each body must say beyond reference, service and status link: the clearing delay, the authority,
# the authority's message, the decision, the withdrawal.
BODIES = {
    "de": ["Eingang", "Clearingstelle", "Landratsamt Kelheim", "eingegangen", "bearbeitet",
           "Bitte reichen Sie den Mietvertrag nach.", "Ihr Antrag wurde bewilligt.", "abgeschlossen",
           "Signatur fehlt", "zurückgenommen"],
    "en": ["received", "clearing office", "Landratsamt Kelheim", "accepted for processing", "being processed",
           "Bitte reichen Sie den Mietvertrag nach.", "Your application has been approved.", "closed",
           "Signatur fehlt", "withdrawn"],
}


async def test_every_message_reaches_a_real_smtp_server_in_german_and_english(
    tmp_path: Path, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """Receipt, clearing delay, routed, and every announced status, with the right subject and body."""
    from shared.events import Problem

    cases = {"de": Case(language="de"), "en": Case(language="en")}
    async with notify(kafka_settings, sqlite_url(tmp_path), mailbox.port):
        for case in cases.values():
            # Different topics are consumed in no fixed order: each waits for the mail before it.
            await send(kafka_settings, topics.SUBMITTED, case.submitted())
            await mail_about(mailbox, case.reference, 1)
            await send(kafka_settings, topics.UNROUTABLE, case.unroutable())
            await mail_about(mailbox, case.reference, 2)
            await send(kafka_settings, topics.ROUTED, case.routed("Landratsamt Kelheim"))
            await mail_about(mailbox, case.reference, 3)
            # One topic, one partition: these arrive in order.
            for status, fields in [
                (CaseStatus.RECEIVED, {}),
                (CaseStatus.IN_PROGRESS, {}),
                (CaseStatus.INFORMATION_REQUESTED, {"message": "Bitte reichen Sie den Mietvertrag nach."}),
                (CaseStatus.DECIDED, {"outcome": Outcome.APPROVED}),
                (CaseStatus.CLOSED, {}),
                (CaseStatus.REJECTED, {"problems": [Problem(title="Signatur fehlt")]}),
                (CaseStatus.WITHDRAWN, {}),
            ]:
                await send(kafka_settings, topics.CASE_STATUS, case.status(status, **fields))
        for language, case in cases.items():
            received = await mail_about(mailbox, case.reference, 10)
            assert [m.subject for m in received] == [s.format(ref=case.reference) for s in SUBJECTS[language]]
            for message, phrase in zip(received, BODIES[language], strict=True):
                assert phrase in message.body
                assert case.reference in message.body
                assert f"/{case.case_id}" in message.body
                assert ("Guten Tag" if language == "de" else "Dear") in message.body
                assert message.message["Content-Language"] == language
                assert case.form_secret not in message.message.as_string()
            service = "Wohngeld (Mietzuschuss)" if language == "de" else "Housing benefit (Wohngeld)"
            assert all(service in m.body for m in received)


async def test_parked_messages_are_deleted_after_retention_and_none_parked_after_the_contact_went(
    database_url: str, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """An event parked for a case whose submitted event never comes holds a message to the applicant: deleted after
    the retention period, and the deletion published. An event for a case whose contact is gone is not parked."""
    never_submitted, closed = Case(), Case()
    async with notify(kafka_settings, database_url, mailbox.port, retention_days=1 / 86400,
                      retention_interval_s=0.05) as (service, _):
        store = NotifyStore(service.engine)
        await send(kafka_settings, topics.SUBMITTED, closed.submitted())
        await send(kafka_settings, topics.CASE_STATUS, closed.status(CaseStatus.CLOSED))
        await mail_about(mailbox, closed.reference, 2)
        await consume(kafka_settings, topics.DELETIONS, 1,
                      predicate=lambda r: header(r, "ce_subject") == str(closed.case_id))

        asked = never_submitted.status(CaseStatus.INFORMATION_REQUESTED, message="Bitte Lohnzettel nachreichen")
        await send(kafka_settings, topics.CASE_STATUS, asked)
        [record] = await consume(kafka_settings, topics.DELETIONS, 1,
                                 predicate=lambda r: header(r, "ce_subject") == str(never_submitted.case_id))
        deleted = parse_event(record.headers, record.value, record.key).data_as(PersonalDataDeleted)
        assert (deleted.service, deleted.categories, deleted.reason) == ("notify", ["message"], "retention")
        assert await anyio.to_thread.run_sync(store.parked, never_submitted.case_id) == []

        # After its contact went: consumed, not parked (nobody to tell), and nothing sent.
        late = [closed.status(CaseStatus.INFORMATION_REQUESTED, message="Noch eine Frage"),
                never_submitted.status(CaseStatus.CLOSED)]
        for event in late:
            await send(kafka_settings, topics.CASE_STATUS, event)
        await wait_until(lambda: all(store.processed(event.headers["ce_id"]) for event in late))
        for case in (closed, never_submitted):
            assert await anyio.to_thread.run_sync(store.parked, case.case_id) == []
        assert len(mailbox.about(closed.reference)) == 2


async def test_contact_data_is_deleted_after_retention_and_the_deletion_published(
    database_url: str, kafka_settings: KafkaSettings, mailbox: Mailbox
) -> None:
    """A second's retention: the closed case's contact goes, its notifications stay, a deletion event goes out;
    the open case's contact stays (SQLite and PostgreSQL)."""
    closed, still_open = Case(), Case()
    async with notify(kafka_settings, database_url, mailbox.port, retention_days=1 / 86400,
                      retention_interval_s=0.05) as (service, _):
        store = NotifyStore(service.engine)
        for case in (closed, still_open):
            await send(kafka_settings, topics.SUBMITTED, case.submitted())
            await mail_about(mailbox, case.reference)
        await send(kafka_settings, topics.CASE_STATUS, closed.status(CaseStatus.CLOSED))
        await mail_about(mailbox, closed.reference, 2)

        [record] = await consume(kafka_settings, topics.DELETIONS, 1,
                                 predicate=lambda r: header(r, "ce_subject") == str(closed.case_id))
        envelope = parse_event(record.headers, record.value, record.key)
        assert envelope.type == events.PERSONAL_DATA_DELETED_V1
        deleted = envelope.data_as(PersonalDataDeleted)
        assert deleted.case_id == closed.case_id
        assert deleted.service == "notify"
        assert deleted.categories == ["name", "email"]
        assert deleted.reason == "retention"
        assert_no_personal_data(record, closed)

        assert await anyio.to_thread.run_sync(store.contact, closed.case_id) is None
        assert await anyio.to_thread.run_sync(store.contact, still_open.case_id) is not None
        kept = await listed(service, closed)
        assert [n.status for n in kept] == [NotificationStatus.SENT, NotificationStatus.SENT]
