"""Fixtures of the notify tests: a real SMTP server that keeps what it receives in memory."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from deploy.local.broker import Tansu, free_port


@dataclass(frozen=True)
class Received:
    """One message as the SMTP server got it: envelope recipients and the parsed message."""

    rcpt_tos: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        # Python folds a long subject onto the line after "Subject:"; mail clients unfold and trim, so do we.
        return str(self.message["Subject"]).strip()

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


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """A broker of their own for each module of notify's tests.

    Notify reads every case topic from the beginning; on the session's broker it would first work through the
    events other suites left there, and their mail would race the mail these tests count.
    """
    broker = Tansu(log_path=tmp_path_factory.mktemp("tansu-notify") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[Mailbox]:
    """One real SMTP server for the session on a free port; tests tell their mail apart by case reference."""
    box = Mailbox()
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


class ScriptedMailbox(Mailbox):
    """An SMTP server that answers the first RCPT and DATA commands from scripts, then accepts normally.

    E.g. ``data_replies=["451 4.3.0 Try again later"]``: the first message is refused temporarily, the next
    accepted. Counts every RCPT and DATA command it saw.
    """

    def __init__(self, *, rcpt_replies: list[str] | None = None, data_replies: list[str] | None = None) -> None:
        super().__init__()
        self.rcpt_replies = list(rcpt_replies or [])
        self.data_replies = list(data_replies or [])
        self.rcpt_commands = 0
        self.data_commands = 0

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        with self._lock:
            self.rcpt_commands += 1
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self._lock:
            self.data_commands += 1
            if self.data_replies:
                return self.data_replies.pop(0)
        return await super().handle_DATA(server, session, envelope)

    def all(self) -> list[Received]:
        with self._lock:
            return list(self._received)


@contextlib.contextmanager
def smtp_server(box: Mailbox) -> Iterator[Mailbox]:
    """Run ``box`` as a real SMTP server on a free port for one test."""
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass(frozen=True)
class PostfachRequest:
    """One request the Postfach server got."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


class PostfachServer:
    """A mailbox API in the style of the BundID-Postfach, as a real HTTP server in a thread.

    Checks the bearer token (401 otherwise), answers the scripted status codes first and 201 afterwards,
    and records every request.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.script: list[int] = []
        self.requests: list[PostfachRequest] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    if self.headers.get("Authorization") != f"Bearer {server.token}":
                        status = 401
                    elif server.script:
                        status = server.script.pop(0)
                    else:
                        status = 201
                    server.requests.append(
                        PostfachRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                payload = json.dumps({"message_id": str(uuid.uuid4())} if status < 300 else {"error": status})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1/messages"

    def about(self, reference: str) -> list[PostfachRequest]:
        with self._lock:
            return [request for request in self.requests if request.body.get("reference") == reference]


@pytest.fixture
def postfach() -> Iterator[PostfachServer]:
    """A real HTTP Postfach server for one test."""
    server = PostfachServer(token=f"token-{uuid.uuid4().hex}")
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
