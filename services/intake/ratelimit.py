"""Per-client rate limits on intake's client-authenticated routes (SPEC §5): 429 with ``Retry-After``, and the
``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` header fields (IETF draft "RateLimit header fields for HTTP") on
every response of those routes.

The counters live in this process's memory, a moving window per client: each replica limits on its own, so with N
replicas a client may make up to N times the configured rate in total. The ``limits`` library reads the notation;
the window itself is a deque of request times here, because ``limits``' in-memory storage starts a thread every
10 ms to expire entries: a tenth of intake's CPU under load (``make bench``'s profile).
"""

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

import limits
from fastapi import Depends, Request

from shared.auth import Authenticator
from shared.events import ClientRecord
from shared.problems import ProblemException

# The ASGI scope key under which a request's rate-limit header fields wait for the response.
SCOPE_KEY = "ozg.rate_limit_headers"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_limit(value: str) -> limits.RateLimitItem:
    """A limit in the ``limits`` notation, e.g. ``600/minute`` or ``10 per second``; ValueError otherwise."""
    return limits.parse(value)


class RateLimiter:
    """One moving window per client id, in memory: a request is allowed while fewer than the limit's amount were
    allowed in the window before it (refused ones don't count)."""

    def __init__(self, limit: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.item = parse_limit(limit)
        self._window = float(self.item.get_expiry())
        self._clock = clock
        # Per client, the times of its allowed requests within the window, oldest first.
        self._allowed: dict[str, deque[float]] = {}

    def hit(self, client_key: str) -> tuple[bool, dict[str, str]]:
        """Count one request of ``client_key``: whether it is allowed, and the header fields to answer with."""
        now = self._clock()
        times = self._allowed.setdefault(client_key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        allowed = len(times) < self.item.amount
        if allowed:
            times.append(now)
        remaining = self.item.amount - len(times)
        # When the oldest request leaves the window, one more is allowed again.
        reset = max(0, math.ceil(times[0] + self._window - now)) if times else 0
        headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, reset))
        return allowed, headers

    def dependency(self, authenticate: Authenticator) -> Callable[..., Awaitable[ClientRecord]]:
        """``authenticate`` (401/403 first) followed by this limit on the authenticated client (429 beyond)."""

        async def limited(
            request: Request, client: Annotated[ClientRecord, Depends(authenticate)]
        ) -> ClientRecord:
            allowed, headers = self.hit(str(client.client_id))
            pending = request.scope.get(SCOPE_KEY)
            if isinstance(pending, dict):
                pending.update(headers)
            if not allowed:
                raise ProblemException(
                    429, f"Too many requests: at most {self.item.amount} per {self.item.get_expiry()} s per client.",
                    kind="rate-limited", title="Too many requests", headers=headers,
                )
            return client

        return limited


class RateLimitHeaders:
    """ASGI middleware: puts a request's rate-limit header fields on its response, whatever answered it (the
    route, or a problem raised inside it), unless the response already carries them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: dict[str, str] = {}
        scope[SCOPE_KEY] = pending

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and pending:
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in raw}
                raw += [(name.lower().encode(), value.encode()) for name, value in pending.items()
                        if name.lower().encode() not in present]
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)
