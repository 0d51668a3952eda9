"""A token bucket per channel, so a burst of events doesn't overwhelm the SMTP relay or the Postfach API."""

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, up to ``burst`` saved up; :meth:`acquire` waits for a token.

    ``rate`` 0 means unlimited. The limit holds per process: with several replicas, divide the relay's limit
    among them.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def try_acquire(self) -> float:
        """Take a token and return 0, or return how many seconds until one is available (taking nothing)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    async def acquire(self) -> None:
        """Wait until a token is available and take it; callers are served one after another."""
        async with self._lock:
            for _ in range(1000):
                wait = self.try_acquire()
                if wait <= 0:
                    return
                await asyncio.sleep(wait)
