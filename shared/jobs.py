"""Background jobs: the one loop every periodic task of a service runs in (sweeps, polls, probes, retention)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def periodic(
    name: str, interval_s: float, round_: Callable[[], Awaitable[object]], *, wait_first: bool = False,
) -> Callable[[], Awaitable[None]]:
    """A background job (``Service.background``) running ``round_`` every ``interval_s`` seconds, the first time at
    once (or, with ``wait_first``, after one interval); a failed round is logged and the job goes on."""

    async def job() -> None:
        if wait_first:
            await asyncio.sleep(interval_s)
        while True:
            try:
                await round_()
            except Exception as exc:  # noqa: BLE001 - a database or broker outage must not end the job
                log.error(f"{name} failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(interval_s)

    job.__name__ = name.replace(" ", "_")
    return job
