"""Delivery channels: how a rendered message reaches the applicant.

Only e-mail exists so far; ``postfach`` and ``letter`` answer "not implemented" until a later issue adds them.
Errors are reported by class and SMTP code only: an SMTP server's text often quotes the recipient's address.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Protocol

import aiosmtplib

from services.notify.messages import Message
from services.notify.models import Contact
from services.notify.settings import Settings

log = logging.getLogger(__name__)

NOT_IMPLEMENTED = "channel not implemented yet"


@dataclass(frozen=True)
class Delivery:
    """The outcome of delivering one message: whether it went out, after how many attempts, and why not."""

    ok: bool
    attempts: int
    error: str | None = None


class Channel(Protocol):
    """A way to reach applicants."""

    async def deliver(self, contact: Contact, message: Message) -> Delivery:
        """Deliver ``message`` to ``contact``; never raises for a delivery failure, reports it instead."""
        ...


class NotImplementedChannel:
    """A channel that exists in the product but not in the code yet: every delivery fails, without retries."""

    async def deliver(self, contact: Contact, message: Message) -> Delivery:
        """Fail at once with :data:`NOT_IMPLEMENTED`."""
        return Delivery(ok=False, attempts=0, error=NOT_IMPLEMENTED)


def _describe(exc: BaseException) -> str:
    """An error description without personal data: the exception class and the SMTP reply code."""
    codes: list[int] = []
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [refused.code for refused in exc.recipients]
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        codes = [exc.code]
    suffix = f" ({', '.join(map(str, codes))})" if codes else ""
    return f"{type(exc).__name__}{suffix}"


def _transient(exc: BaseException) -> bool:
    """Whether trying again may help: connection trouble and 4xx replies yes, 5xx replies (permanent) no."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(400 <= refused.code < 500 for refused in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return 400 <= exc.code < 500
    return isinstance(exc, OSError | aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError)


class EmailChannel:
    """Sends messages through the configured SMTP relay."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        _, from_address = parseaddr(settings.mail_from)
        # Message-IDs carry the sender's domain, as RFC 5322 recommends.
        self.domain = from_address.rpartition("@")[2] or "ozg.example"

    def build(self, contact: Contact, message: Message) -> EmailMessage:
        """The e-mail for ``message`` to ``contact``."""
        if not contact.email:
            raise ValueError("the contact has no e-mail address")
        mail = EmailMessage()
        # set_content() first: it drops any Content-* header set before it, Content-Language included.
        # Quoted-printable keeps the German text readable in a raw .eml, unlike base64.
        mail.set_content(message.body, cte="quoted-printable")
        mail["From"] = self.settings.mail_from
        mail["To"] = Address(display_name=contact.name, addr_spec=contact.email)
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.domain)
        mail["Content-Language"] = message.language
        # RFC 3834: tells mail servers and autoresponders that no human wrote this, so they don't answer it.
        mail["Auto-Submitted"] = "auto-generated"
        return mail

    async def deliver(self, contact: Contact, message: Message) -> Delivery:
        """Send the e-mail, retrying transient failures with exponential back-off."""
        try:
            mail = self.build(contact, message)
        except (ValueError, TypeError, MessageError) as exc:
            # E.g. a line break in a name: header injection is refused by the email package, and not retried.
            return Delivery(ok=False, attempts=0, error=f"invalid message: {type(exc).__name__}")
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        attempt = 0
        while True:
            attempt += 1
            try:
                await aiosmtplib.send(
                    mail,
                    hostname=settings.smtp_host,
                    port=settings.smtp_port,
                    username=settings.smtp_username,
                    password=password,
                    use_tls=settings.smtp_tls,
                    # False, not None: aiosmtplib would otherwise upgrade whenever the server offers it.
                    start_tls=settings.smtp_starttls,
                    timeout=settings.smtp_timeout_s,
                )
            except (aiosmtplib.SMTPException, OSError) as exc:
                if attempt >= settings.smtp_attempts or not _transient(exc):
                    return Delivery(ok=False, attempts=attempt, error=_describe(exc))
                log.warning("smtp attempt failed, retrying", extra={"attempt": attempt, "error": _describe(exc)})
                await asyncio.sleep(settings.smtp_backoff_s * 2 ** (attempt - 1))
                continue
            return Delivery(ok=True, attempts=attempt)
