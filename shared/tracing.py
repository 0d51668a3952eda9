"""W3C Trace Context across services: a ``traceparent`` travels in HTTP and Kafka headers, and every log line
and every event published while handling a request or message carries the same trace id.

The active context (trace, span, case id) lives in a context variable: set by the HTTP middleware for requests,
by the consumer middleware for messages; ``envelope.build_event`` and the log filter read it.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRecord
from faststream import BaseMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from faststream._internal.basic_types import AsyncFuncAny
    from faststream.message import StreamMessage

HEADER = "traceparent"


def _random_id(bits: int) -> str:
    """A random, non-zero id of ``bits`` bits in hex. Not from the operating system's CSPRNG, as OpenTelemetry's
    SDK does it too: ids need to be unique, not secret, and os.urandom() per id was 4 % of intake's CPU under
    load."""
    while True:
        value = random.getrandbits(bits)
        if value:
            return f"{value:0{bits // 4}x}"

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceContext:
    """One span of a trace, and the case it concerns (if known)."""

    trace_id: str
    span_id: str
    flags: str = "01"
    case_id: str | None = None

    @property
    def traceparent(self) -> str:
        """This span as a ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return replace(self, span_id=_random_id(64))


_current: ContextVar[TraceContext | None] = ContextVar("ozg_trace", default=None)


def parse(value: str | None) -> TraceContext | None:
    """A ``traceparent`` value, or None when absent or malformed (all-zero ids are invalid by the spec)."""
    match = _TRACEPARENT.match(value.strip().lower()) if value else None
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return TraceContext(trace_id=match[1], span_id=match[2], flags=match[3])


def new_trace(case_id: str | None = None) -> TraceContext:
    """The root span of a new trace."""
    return TraceContext(trace_id=_random_id(128), span_id=_random_id(64), case_id=case_id)


def current() -> TraceContext | None:
    """The active span, if any."""
    return _current.get()


def outgoing_traceparent() -> str:
    """The ``traceparent`` for a message sent now: a child of the active span, or the root of a new trace."""
    active = _current.get()
    return (active.child() if active else new_trace()).traceparent


@contextlib.contextmanager
def activated(context: TraceContext) -> Iterator[TraceContext]:
    """Make ``context`` the active span for the duration of the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def set_case(case_id: str) -> None:
    """Name the case the active span concerns (for the logs); starts a trace if none is active."""
    active = _current.get()
    _current.set(replace(active, case_id=case_id) if active else new_trace(case_id))


class TraceLogFilter(logging.Filter):
    """Adds ``trace_id`` and ``case_id`` of the active span to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        active = _current.get()
        if active is not None:
            record.trace_id = active.trace_id
            if active.case_id:
                record.case_id = active.case_id
        return True


def _header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key.lower() == name and value is not None:
            try:
                return str(value.decode())
            except UnicodeDecodeError:
                return None
    return None


def consumed(record: ConsumerRecord[Any, Any]) -> contextlib.AbstractContextManager[TraceContext]:
    """Activate the trace a consumed record carries (a child span of it), or a new one; batch handlers wrap
    each record's work in this, single-record handlers get it from TraceMiddleware."""
    parent = parse(_header(record, HEADER))
    context = parent.child() if parent else new_trace()
    return activated(replace(context, case_id=_header(record, "ce_subject")))


class TraceMiddleware(BaseMiddleware):
    """Consumer side: continue the trace of each consumed record (or start one) while its handler runs."""

    async def consume_scope(self, call_next: AsyncFuncAny, msg: StreamMessage[Any]) -> Any:
        record = msg.raw_message
        if not isinstance(record, ConsumerRecord):
            return await call_next(msg)
        with consumed(record):
            return await call_next(msg)


class TraceASGIMiddleware:
    """HTTP side: continue the caller's ``traceparent`` (or start a trace) and answer with this span's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == HEADER.encode()), None)
        parent = parse(incoming)
        context = parent.child() if parent else new_trace()

        async def send_with_traceparent(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER.encode(), context.traceparent.encode())]
            await send(message)

        with activated(context):
            await self.app(scope, receive, send_with_traceparent)
