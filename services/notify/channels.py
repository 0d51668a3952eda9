"""Delivery channels: how a rendered message reaches the applicant.

A channel makes one attempt and reports whether it worked and, if not, whether trying again may help (a
temporary failure) or not (a permanent one); retries are scheduled by :mod:`services.notify.delivery`.
Errors are reported by class and status code only: an SMTP server's or API's text often quotes the recipient.
"""

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Protocol
from uuid import UUID

import aiosmtplib
import anyio.to_thread
import httpx

from services.notify.letters import LetterContent, letter_filename, render_letter
from services.notify.messages import Message
from services.notify.models import Contact
from services.notify.settings import Settings
from shared.retention import remove_stale_files

# An SMTP connection is reused for the next message while it has been idle less than this (relays close idle
# sessions after a few minutes; RFC 5321 §4.5.3.2.7 asks them to wait at least 5), and at most this many are kept.
SMTP_IDLE_S = 30.0
SMTP_KEPT = 4
# A letter is written beside its final name as ``.<random>.part`` (hidden: printing software skips it), then renamed.
PART_PREFIX, PART_SUFFIX = ".", ".part"
# Such a file this old was left by a crash: a rendered letter is written in one go, within milliseconds.
STALE_PART_S = 3600.0

@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt: whether the message went out, and if not, why and whether to try again."""

    ok: bool
    error: str | None = None
    temporary: bool = False

    @classmethod
    def sent(cls) -> "Delivery":
        return cls(ok=True)

    @classmethod
    def retry(cls, error: str) -> "Delivery":
        """A temporary failure: relay or API unreachable, a timeout, SMTP 4xx, HTTP 5xx."""
        return cls(ok=False, error=error, temporary=True)

    @classmethod
    def permanent(cls, error: str) -> "Delivery":
        """A failure that trying again won't fix: SMTP 5xx, a bad address, HTTP 4xx, missing contact data."""
        return cls(ok=False, error=error, temporary=False)


class Channel(Protocol):
    """A way to reach applicants.

    ``repeatable`` says whether an attempt interrupted by a crash may simply be made again: true where the receiver
    recognises the repeat (the Postfach's Idempotency-Key, the letter's fixed file name), false for e-mail, which
    may have gone out.
    """

    repeatable: bool

    async def deliver(self, notification_id: UUID, contact: Contact, message: Message) -> Delivery:
        """Make one attempt to deliver ``message`` to ``contact``; never raises for a delivery failure."""
        ...


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

    repeatable = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        _, from_address = parseaddr(settings.mail_from)
        # Message-IDs carry the sender's domain, as RFC 5322 recommends.
        self.domain = from_address.rpartition("@")[2] or "ozg.example"
        # The email package parses a header on every assignment; the ones all messages share are parsed once.
        self._from = _header("From", settings.mail_from)
        self._auto_submitted = _header("Auto-Submitted", "auto-generated")
        self._languages: dict[str, object] = {}
        self._date: tuple[int, object] = (-1, "")
        # Connections to the relay kept open for the next message, each with when it was last used (monotonic).
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def build(self, notification_id: UUID, contact: Contact, message: Message) -> EmailMessage:
        """The e-mail for ``message`` to ``contact``."""
        if not contact.email:
            raise ValueError("the contact has no e-mail address")
        mail = EmailMessage()
        # set_content() first: it drops any Content-* header set before it, Content-Language included.
        # Quoted-printable keeps the German text readable in a raw .eml, unlike base64.
        mail.set_content(message.body, cte="quoted-printable")
        mail["From"] = self._from
        mail["To"] = Address(display_name=contact.name, addr_spec=contact.email)
        mail["Subject"] = message.subject
        mail["Date"] = self._date_header()
        # The same Message-ID on every attempt of one notification: a relay or mailbox can drop a repeat.
        # (make_msgid() would add the time and a random number: a new id per attempt.)
        mail["Message-ID"] = f"<{notification_id.hex}@{self.domain}>"
        language = self._languages.get(message.language)
        if language is None:
            language = self._languages[message.language] = _header("Content-Language", message.language)
        mail["Content-Language"] = language
        # RFC 3834: tells mail servers and autoresponders that no human wrote this, so they don't answer it.
        mail["Auto-Submitted"] = self._auto_submitted
        return mail

    def _date_header(self) -> object:
        """The Date header of this second (RFC 5322 dates have no fractions), parsed once per second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, _header("Date", formatdate(second, localtime=False, usegmt=True)))
        return self._date[1]

    async def deliver(self, notification_id: UUID, contact: Contact, message: Message) -> Delivery:
        """One SMTP transaction."""
        try:
            mail = self.build(notification_id, contact, message)
        except (ValueError, TypeError, MessageError) as exc:
            # E.g. a line break in a name: header injection is refused by the email package, and not retried.
            return Delivery.permanent(f"invalid message: {type(exc).__name__}")
        try:
            await self._send(mail)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Delivery(ok=False, error=_describe(exc), temporary=_transient(exc))
        return Delivery.sent()

    async def _send(self, mail: EmailMessage) -> None:
        """Send over an idle connection if there is one, else over a new one; keep it open for the next message.

        Connecting (TCP, greeting, EHLO, STARTTLS, AUTH) cost more than sending a message. A kept connection the
        relay closed in the meantime fails at its first command, before anything was sent: the message then goes
        once more over a new connection instead of counting as a failed attempt.
        """
        smtp = self._checkout()
        if smtp is not None:
            try:
                await self._transaction(smtp, mail)
                return
            except aiosmtplib.SMTPServerDisconnected:
                pass
        smtp = self._client()
        await smtp.connect()
        await self._transaction(smtp, mail)

    async def _transaction(self, smtp: aiosmtplib.SMTP, mail: EmailMessage) -> None:
        try:
            await smtp.send_message(mail)
        except aiosmtplib.SMTPResponseException:
            # A refusal (4xx, 5xx) leaves the session usable: aiosmtplib reset it with RSET.
            self._checkin(smtp)
            raise
        except BaseException:
            smtp.close()
            raise
        self._checkin(smtp)

    def _client(self) -> aiosmtplib.SMTP:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        return aiosmtplib.SMTP(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=password,
            use_tls=settings.smtp_tls,
            # False, not None: aiosmtplib would otherwise upgrade whenever the server offers it.
            start_tls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_s,
        )

    def _checkout(self) -> aiosmtplib.SMTP | None:
        """The most recently used open connection, closing those idle too long (a relay times them out)."""
        now = time.monotonic()
        while self._idle:
            smtp, used = self._idle.pop()
            if smtp.is_connected and now - used < SMTP_IDLE_S:
                return smtp
            smtp.close()
        return None

    def _checkin(self, smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected and len(self._idle) < SMTP_KEPT:
            self._idle.append((smtp, time.monotonic()))
        else:
            smtp.close()

    async def aclose(self) -> None:
        """Close the kept connections."""
        while self._idle:
            self._idle.pop()[0].close()


def _header(name: str, value: str) -> object:
    """``value`` parsed as header ``name`` once, for assigning to many messages; the raw string if it doesn't
    parse, so each message refuses it as before (``build`` reports that as an invalid message)."""
    probe = EmailMessage()
    try:
        probe[name] = value
    except (ValueError, TypeError, MessageError):
        return value
    return probe[name]


class PostfachChannel:
    """Posts messages to a mailbox API in the style of the BundID-Postfach.

    ``POST {NOTIFY_POSTFACH_URL}`` with ``Authorization: Bearer {NOTIFY_POSTFACH_TOKEN}``, ``Idempotency-Key:
    <notification id>`` (the same on every attempt) and the JSON body ``{"postfach_id", "subject", "body",
    "reference", "language"}``. Any 2xx is delivered; 408, 429 and 5xx, timeouts and connection errors are
    retried; any other answer is permanent.
    """

    repeatable = True

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=settings.postfach_timeout_s, transport=transport)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def deliver(self, notification_id: UUID, contact: Contact, message: Message) -> Delivery:
        """One POST to the mailbox API."""
        if not self.settings.postfach_url:
            return Delivery.permanent("postfach not configured")
        if not contact.postfach_id:
            return Delivery.permanent("the contact has no postfach_id")
        headers = {"Idempotency-Key": str(notification_id)}
        if self.settings.postfach_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.postfach_token.get_secret_value()}"
        payload = {
            "postfach_id": contact.postfach_id,
            "subject": message.subject,
            "body": message.body,
            "reference": contact.reference,
            "language": message.language,
        }
        try:
            response = await self.client.post(self.settings.postfach_url, json=payload, headers=headers)
        except httpx.TransportError as exc:
            return Delivery.retry(type(exc).__name__)
        if response.is_success:
            return Delivery.sent()
        error = f"HTTP {response.status_code}"
        if response.status_code in (408, 429) or response.status_code >= 500:
            return Delivery.retry(error)
        return Delivery.permanent(error)


class LetterChannel:
    """Writes a PDF letter (DIN 5008) per message into the outbox directory, from where it is printed and posted.

    The file appears atomically (written beside it, then renamed), named by case reference and notification id,
    so printing software never picks up half a letter and a repeated attempt replaces rather than duplicates it.
    What a crash leaves of a letter being written is removed by ``sweep_parts`` in the retention round.
    """

    repeatable = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = Path(settings.letter_dir)

    def recipient(self, contact: Contact) -> list[str] | None:
        """The address block, or None when the contact has no complete postal address."""
        if not (contact.street and contact.postal_code and contact.city):
            return None
        lines = [contact.name, contact.street, f"{contact.postal_code} {contact.city}"]
        if contact.country and contact.country != "DE":
            lines.append(contact.country)
        return lines

    def discard(self, reference: str) -> int:
        """Delete the letters of the case ``reference`` still in the outbox (its retention period ran out: printed
        long ago, or never to be); returns how many."""
        removed = 0
        for path in self.directory.glob(letter_filename(reference, "*")):
            with contextlib.suppress(FileNotFoundError):  # taken by the printing software meanwhile
                path.unlink()
                removed += 1
        return removed

    def sweep_parts(self, older_than_s: float = STALE_PART_S) -> int:
        """Delete the temporary files of letters a crash left behind (name and address are on them) once they are
        ``older_than_s`` old, judged by their last write; returns how many."""
        return remove_stale_files(self.directory.glob(f"{PART_PREFIX}*{PART_SUFFIX}"), older_than_s)

    def _write(self, name: str, pdf: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=PART_PREFIX, suffix=PART_SUFFIX)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(pdf)
            os.replace(temporary, self.directory / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    async def deliver(self, notification_id: UUID, contact: Contact, message: Message) -> Delivery:
        """Render the letter and put it into the outbox."""
        recipient = self.recipient(contact)
        if recipient is None:
            return Delivery.permanent("the contact has no postal address")
        content = LetterContent(
            sender_line=self.settings.letter_sender,
            letterhead=self.settings.letter_sender.split("·")[0].strip(),
            recipient=recipient,
            reference=contact.reference,
            subject=message.subject,
            body=message.body,
            language=message.language,
            date=datetime.now(UTC).date(),
        )
        name = letter_filename(contact.reference, str(notification_id))
        try:
            pdf = await anyio.to_thread.run_sync(render_letter, content)
            await anyio.to_thread.run_sync(self._write, name, pdf)
        except OSError as exc:
            # A full or unmounted outbox: worth trying again later.
            return Delivery.retry(type(exc).__name__)
        return Delivery.sent()
