"""The message templates and the e-mail built from them, for every status and both languages."""

from __future__ import annotations

import uuid

import pytest

from deploy.local.broker import free_port
from services.notify.channels import EmailChannel
from services.notify.handlers import ANNOUNCED_STATUSES
from services.notify.messages import Renderer, service_name
from services.notify.models import Contact
from services.notify.settings import Settings
from shared.events import CaseStatus, Outcome, ReplyChannel

REFERENCE = "OZG-2026-8F3K-2QXD"
STATUS_URL = "http://127.0.0.1:8001/v1/applications/0190c4a4-0000-7000-8000-000000000000"


def context(**extra: object) -> dict[str, object]:
    return {
        "name": "Erika Mustermann", "reference": REFERENCE, "service": "Wohngeld (Mietzuschuss)",
        "authority": None, "status_url": STATUS_URL, "channel": "email", "status": None, "outcome": None,
        "message": None, "problems": [], **extra,
    }


def test_service_names_come_from_the_catalogue() -> None:
    assert service_name("99107023037000", "de") == "Wohngeld (Mietzuschuss)"
    assert service_name("99107023037000", "en") == "Housing benefit (Wohngeld)"
    assert service_name("99999999999999", "de") == "99999999999999"


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("status", sorted(ANNOUNCED_STATUSES))
def test_every_announced_status_renders(language: str, status: CaseStatus) -> None:
    message = Renderer().render("status-changed", language, context(status=status.value))
    assert REFERENCE in message.subject
    assert "\n" not in message.subject
    assert REFERENCE in message.body
    assert STATUS_URL in message.body
    assert ("Guten Tag" if language == "de" else "Dear") in message.body


@pytest.mark.parametrize("template", ["submitted", "routed", "unroutable"])
@pytest.mark.parametrize("language", ["de", "en"])
def test_case_event_templates_render(template: str, language: str) -> None:
    message = Renderer().render(template, language, context(authority="Stadt Wiesbaden"))
    assert REFERENCE in message.subject
    assert "Wohngeld (Mietzuschuss)" in message.body
    assert STATUS_URL in message.body
    if template == "routed":
        assert "Stadt Wiesbaden" in message.body


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("status", [CaseStatus.DECIDED, CaseStatus.CLOSED, CaseStatus.REJECTED])
def test_a_refused_withdrawal_says_why(language: str, status: CaseStatus) -> None:
    message = Renderer().render("withdrawal-refused", language,
                                context(status=status.value, authority="Landratsamt Kelheim"))
    assert REFERENCE in message.subject
    assert ("Rücknahme nicht mehr möglich" if language == "de" else "withdrawal no longer possible") in message.subject
    reason = {("de", CaseStatus.DECIDED): "bereits entschieden", ("de", CaseStatus.CLOSED): "bereits abgeschlossen",
              ("de", CaseStatus.REJECTED): "bereits nicht angenommen", ("en", CaseStatus.DECIDED): "already decided",
              ("en", CaseStatus.CLOSED): "already been closed",
              ("en", CaseStatus.REJECTED): "already declined"}[(language, status)]
    assert reason in message.body
    assert STATUS_URL in message.body
    if status != CaseStatus.CLOSED:
        assert "Landratsamt Kelheim" in message.body


def test_decision_names_outcome_message_and_authority() -> None:
    message = Renderer().render(
        "status-changed", "de",
        context(status="decided", outcome=Outcome.PARTIALLY_APPROVED.value, message="Bescheid folgt.",
                authority="Landratsamt Kelheim"),
    )
    assert "teilweise bewilligt" in message.body
    assert "Bescheid folgt." in message.body
    assert "Landratsamt Kelheim" in message.body


def test_rejection_lists_the_problems_in_english() -> None:
    message = Renderer().render("status-changed", "en", context(status="rejected", problems=["Signature missing"]))
    assert "could not accept" in message.body
    assert "  - Signature missing" in message.body


def test_unknown_language_falls_back_to_german() -> None:
    message = Renderer().render("submitted", "fr", context())
    assert message.language == "de"
    assert message.subject.startswith("Eingangsbestätigung")


async def test_a_line_break_in_a_name_is_not_sent() -> None:
    """Header injection is refused before any connection is made, and reported without the input."""
    contact = Contact(case_id=uuid.uuid4(), reference=REFERENCE, leika_key="99107023037000", language="de",
                      reply_channel=ReplyChannel.EMAIL, name="Erika\r\nBcc: victim@example.org",
                      email="erika@example.org")
    channel = EmailChannel(Settings(smtp_port=free_port()))
    message = Renderer().render("submitted", "de", context())
    delivery = await channel.deliver(uuid.uuid4(), contact, message)
    assert not delivery.ok
    assert not delivery.temporary
    assert delivery.error == "invalid message: ValueError"


@pytest.mark.parametrize(
    ("channel", "closing"),
    [("email", "nicht auf diese E-Mail"), ("postfach", "nicht auf diese Nachricht"), ("letter", "ohne Unterschrift")],
)
def test_the_closing_line_fits_the_channel(channel: str, closing: str) -> None:
    message = Renderer().render("submitted", "de", context(channel=channel))
    assert closing in message.body


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("template", ["submitted", "routed", "unroutable", "status-changed", "withdrawal-refused"])
def test_templates_address_the_applicant_formally(language: str, template: str) -> None:
    """German texts use the formal "Sie" only; no informal "du"/"dein" anywhere."""
    statuses = sorted(ANNOUNCED_STATUSES) if template == "status-changed" else [CaseStatus.RECEIVED]
    for status in statuses:
        body = Renderer().render(template, language, context(status=status.value, authority="Stadt Kassel")).body
        words = {word.strip(".,:;!?„“\"()").lower() for word in body.split()}
        if language == "de":
            assert words.isdisjoint({"du", "dich", "dir", "dein", "deine", "deinen", "deinem", "deiner"})
            assert "Sie" in body or "Ihr" in body
