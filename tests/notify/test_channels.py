"""The Postfach and letter channels against real parts (an HTTP server, the file system, a PDF reader), the
rate limit and the retry rules."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pypdf import PdfReader

from deploy.local.broker import free_port
from services.notify.channels import Delivery, EmailChannel, LetterChannel, PostfachChannel
from services.notify.delivery import backoff, next_step
from services.notify.letters import printable
from services.notify.messages import Message, Renderer
from services.notify.models import Contact, Notification
from services.notify.ratelimit import TokenBucket
from services.notify.settings import Settings
from shared.events import ReplyChannel
from tests.notify.conftest import Mailbox, PostfachServer, smtp_server

REFERENCE = "OZG-2026-8F3K-2QXD"


def contact(channel: ReplyChannel, **fields: object) -> Contact:
    return Contact(case_id=uuid.uuid4(), reference=REFERENCE, leika_key="99107023037000", language="de",
                   reply_channel=channel, name="Erika Mustermann", **fields)


def message(channel: str = "email", language: str = "de") -> Message:
    return Renderer().render("submitted", language, {
        "name": "Erika Mustermann", "reference": REFERENCE, "service": "Wohngeld (Mietzuschuss)", "authority": None,
        "status_url": "http://127.0.0.1:8001/v1/applications/x", "channel": channel, "status": None,
        "outcome": None, "message": None, "problems": [],
    })


def postfach_settings(server: PostfachServer, **overrides: Any) -> Settings:
    return Settings(postfach_url=server.url, postfach_token=SecretStr(server.token), **overrides)


async def test_postfach_posts_the_documented_json_with_the_bearer_token(postfach: PostfachServer) -> None:
    channel = PostfachChannel(postfach_settings(postfach))
    notification_id = uuid.uuid4()
    try:
        delivery = await channel.deliver(notification_id, contact(ReplyChannel.POSTFACH, postfach_id="bund-123"),
                                         message("postfach"))
    finally:
        await channel.aclose()
    assert delivery == Delivery.sent()
    [request] = postfach.requests
    assert request.path == "/api/v1/messages"
    assert request.headers["authorization"] == f"Bearer {postfach.token}"
    assert request.headers["idempotency-key"] == str(notification_id)
    assert request.headers["content-type"] == "application/json"
    assert set(request.body) == {"postfach_id", "subject", "body", "reference", "language"}
    assert request.body["postfach_id"] == "bund-123"
    assert request.body["reference"] == REFERENCE
    assert request.body["language"] == "de"
    assert request.body["subject"].startswith("Eingangsbestätigung")
    assert "nicht auf diese Nachricht" in request.body["body"]


@pytest.mark.parametrize(
    ("status", "temporary"), [(503, True), (500, True), (429, True), (408, True), (400, False), (404, False)]
)
async def test_postfach_server_errors_are_temporary_client_errors_permanent(
    postfach: PostfachServer, status: int, temporary: bool
) -> None:
    postfach.script = [status]
    channel = PostfachChannel(postfach_settings(postfach))
    try:
        delivery = await channel.deliver(uuid.uuid4(), contact(ReplyChannel.POSTFACH, postfach_id="p"), message())
    finally:
        await channel.aclose()
    assert delivery == Delivery(ok=False, error=f"HTTP {status}", temporary=temporary)


async def test_postfach_wrong_token_is_permanent_and_not_logged(postfach: PostfachServer) -> None:
    settings = Settings(postfach_url=postfach.url, postfach_token=SecretStr("wrong"))
    channel = PostfachChannel(settings)
    try:
        delivery = await channel.deliver(uuid.uuid4(), contact(ReplyChannel.POSTFACH, postfach_id="p"), message())
    finally:
        await channel.aclose()
    assert delivery == Delivery.permanent("HTTP 401")
    assert "wrong" not in repr(settings)


async def test_postfach_unreachable_is_temporary() -> None:
    channel = PostfachChannel(Settings(postfach_url=f"http://127.0.0.1:{free_port()}/messages"))
    try:
        delivery = await channel.deliver(uuid.uuid4(), contact(ReplyChannel.POSTFACH, postfach_id="p"), message())
    finally:
        await channel.aclose()
    assert delivery.temporary
    assert delivery.error == "ConnectError"


async def test_postfach_not_configured_or_no_id_is_permanent() -> None:
    channel = PostfachChannel(Settings())
    try:
        assert await channel.deliver(uuid.uuid4(), contact(ReplyChannel.POSTFACH, postfach_id="p"), message()) == (
            Delivery.permanent("postfach not configured")
        )
    finally:
        await channel.aclose()


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def pdf_text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


async def test_letter_is_a_din_5008_pdf_in_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "letters"
    sender = "Landratsamt Kelheim · Donaupark 12 · 93309 Kelheim"
    channel = LetterChannel(Settings(letter_dir=str(outbox), letter_sender=sender))
    notification_id = uuid.uuid4()
    recipient = contact(ReplyChannel.LETTER, street="Musterstraße 7", postal_code="93309", city="Kelheim",
                        country="DE")
    letter = message("letter")
    delivery = await channel.deliver(notification_id, recipient, letter)
    assert delivery == Delivery.sent()

    [path] = files(outbox)
    assert path.name == f"{REFERENCE}_{notification_id}.pdf"
    reader = PdfReader(path)
    width, height = float(reader.pages[0].mediabox.width), float(reader.pages[0].mediabox.height)
    assert (round(width / 72 * 25.4), round(height / 72 * 25.4)) == (210, 297)  # A4
    text = pdf_text(path)
    # The address block, in its order, and the sender line above it.
    assert "Erika Mustermann\nMusterstraße 7\n93309 Kelheim" in text
    assert "Landratsamt Kelheim · Donaupark 12 · 93309 Kelheim" in text
    assert f"Aktenzeichen: {REFERENCE}" in text
    assert f"Datum: {datetime.now(UTC):%d.%m.%Y}" in text
    assert letter.subject in text
    assert "ohne Unterschrift gültig" in text

    # Positions: the address in the window (45–90 mm from the top, from 20 mm left), the subject below it.
    found: dict[str, tuple[float, float]] = {}

    def visit(text: str, _cm: object, tm: list[float], _font: object, _size: object) -> None:
        if text.strip():
            found.setdefault(text.strip(), (tm[4] / 72 * 25.4, (height - tm[5]) / 72 * 25.4))

    reader.pages[0].extract_text(visitor_text=visit)
    x, y = found["Erika Mustermann"]
    assert 20 <= x <= 30
    assert 62 <= y <= 90
    assert 95 <= found[letter.subject][1] <= 110


async def test_letter_without_an_address_fails_permanently(tmp_path: Path) -> None:
    channel = LetterChannel(Settings(letter_dir=str(tmp_path)))
    delivery = await channel.deliver(uuid.uuid4(), contact(ReplyChannel.LETTER), message("letter"))
    assert delivery == Delivery.permanent("the contact has no postal address")
    assert files(tmp_path) == []


async def test_letter_in_english_names_the_foreign_country(tmp_path: Path) -> None:
    channel = LetterChannel(Settings(letter_dir=str(tmp_path)))
    recipient = contact(ReplyChannel.LETTER, street="Rue de la Loi 1", postal_code="1000", city="Bruxelles",
                        country="BE")
    assert (await channel.deliver(uuid.uuid4(), recipient, message("letter", "en"))).ok
    [path] = files(tmp_path)
    text = pdf_text(path)
    assert "1000 Bruxelles\nBE" in text
    assert f"Reference: {REFERENCE}" in text
    assert f"Date: {datetime.now(UTC).date().isoformat()}" in text


async def test_part_files_a_crash_left_in_the_outbox_are_swept(tmp_path: Path) -> None:
    """A letter's temporary ``.<random>.part`` file (name and address on it) that a crash left behind goes once it
    is an hour old; a younger one (a letter being written), the letters themselves and other files stay."""
    outbox = tmp_path / "letters"
    channel = LetterChannel(Settings(letter_dir=str(outbox)))
    assert channel.sweep_parts() == 0  # no outbox yet: nothing to do
    recipient = contact(ReplyChannel.LETTER, street="Musterstraße 7", postal_code="93309", city="Kelheim")
    assert (await channel.deliver(uuid.uuid4(), recipient, message("letter"))).ok
    [letter] = files(outbox)
    stale, fresh, other = outbox / ".k3j9x_2a.part", outbox / ".p0q1r2s3.part", outbox / "notes.part"
    for path in (stale, fresh, other):
        path.write_bytes(b"%PDF-1.7 half a letter")
    (outbox / ".dir.part").mkdir()
    two_hours_ago = time.time() - 2 * 3600
    for path in (stale, other, letter):
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert channel.sweep_parts() == 1
    assert files(outbox) == sorted([letter, fresh, other, outbox / ".dir.part"])
    assert channel.sweep_parts(older_than_s=0) == 1
    assert not fresh.exists()


def test_characters_beyond_the_pdf_fonts_are_transliterated() -> None:
    assert printable("Größe „Zitat“ – 5 €") == "Größe „Zitat“ – 5 €"
    assert printable("Dvořák Łukasz") == "Dvorák ?ukasz"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, clock=clock)
    assert [bucket.try_acquire() for _ in range(2)] == [0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.now = 100.0
    # Saved up at most one second's worth.
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]


def test_token_bucket_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0)
    assert all(bucket.try_acquire() == 0.0 for _ in range(1000))


def notification(attempts: int, age: timedelta, now: datetime) -> Notification:
    return Notification(notification_id=uuid.uuid4(), case_id=uuid.uuid4(), channel=ReplyChannel.EMAIL,
                        trigger_event_id="e", trigger_type="t", attempts=attempts, created_at=now - age)


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    settings = Settings(retry_backoff_s=30, retry_backoff_max_s=300)
    assert [backoff(settings, n).total_seconds() for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]


def test_only_temporary_failures_are_retried_within_attempts_and_age() -> None:
    settings = Settings(max_attempts=3, max_age_s=3600, retry_backoff_s=60)
    now = datetime.now(UTC)
    temporary = Delivery.retry("SMTPDataError (451)")
    assert next_step(settings, notification(1, timedelta(0), now), temporary, now) == now + timedelta(seconds=60)
    assert next_step(settings, notification(2, timedelta(0), now), temporary, now) == now + timedelta(seconds=120)
    assert next_step(settings, notification(3, timedelta(0), now), temporary, now) is None  # the last attempt
    too_old = notification(1, timedelta(minutes=59, seconds=30), now)
    assert next_step(settings, too_old, temporary, now) is None
    assert next_step(settings, notification(1, timedelta(0), now), Delivery.permanent("550"), now) is None
    assert next_step(settings, notification(1, timedelta(0), now), Delivery.sent(), now) is None


class CountingMailbox(Mailbox):
    """Counts the SMTP sessions (EHLO commands) besides collecting messages."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions = 0

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's name
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses


async def test_email_reuses_its_smtp_connection_and_opens_a_new_one_when_it_is_gone() -> None:
    """Messages share one SMTP session; once that session is gone, the next message goes out over a new one, as a
    successful attempt rather than a temporary failure."""
    box = CountingMailbox()
    to = contact(ReplyChannel.EMAIL, email="e@example.org")
    with smtp_server(box):
        channel = EmailChannel(Settings(smtp_port=box.port))
        try:
            for _ in range(3):
                assert await channel.deliver(uuid.uuid4(), to, message()) == Delivery.sent()
            assert box.sessions == 1

            [(kept, _)] = channel._idle
            assert kept.transport is not None
            kept.transport.abort()  # the session is lost (a relay restart, a network failure)
            assert await channel.deliver(uuid.uuid4(), to, message()) == Delivery.sent()
            assert box.sessions == 2
        finally:
            await channel.aclose()
        assert len(box.about(REFERENCE)) == 4


async def test_every_attempt_of_a_notification_carries_the_same_message_id() -> None:
    """A relay or mailbox can drop a repeat only if the repeat has the same Message-ID."""
    box = Mailbox()
    to = contact(ReplyChannel.EMAIL, email="e@example.org")
    notification_id, other = uuid.uuid4(), uuid.uuid4()
    with smtp_server(box):
        channel = EmailChannel(Settings(smtp_port=box.port, mail_from="OZG <noreply@ozg.example>"))
        try:
            for attempt in (notification_id, notification_id, other):
                assert await channel.deliver(attempt, to, message()) == Delivery.sent()
        finally:
            await channel.aclose()
    ids = [item.message["Message-ID"] for item in box.about(REFERENCE)]
    assert ids == [f"<{notification_id.hex}@ozg.example>"] * 2 + [f"<{other.hex}@ozg.example>"]
