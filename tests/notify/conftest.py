"""Fixtures of the notify tests: a real SMTP server that keeps what it receives in memory."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from deploy.local.broker import free_port


@dataclass(frozen=True)
class Received:
    """One message as the SMTP server got it: envelope recipients and the parsed message."""

    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


class Mailbox:
    """aiosmtpd handler collecting every message; the SMTP server runs in its own thread."""

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        content = envelope.original_content or envelope.content
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._received.append(Received(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def about(self, reference: str) -> list[Received]:
        """The messages whose subject names ``reference``: other tests' mail arrives here too."""
        with self._lock:
            return [item for item in self._received if reference in item.subject]


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """One real SMTP server for the session on a free port; tests tell their mail apart by case reference."""
    box = Mailbox()
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()
