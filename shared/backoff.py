"""Exponential back-off: the one rule every retry loop of the project follows (broker connects, redelivered
batches, dead-letter retries, webhook and notification schedules)."""

from __future__ import annotations

import random


def delay_s(attempt: int, *, base_s: float, cap_s: float, jitter: bool = False) -> float:
    """The wait before retry number ``attempt`` (1-based): ``base_s`` doubled per earlier retry, at most ``cap_s``.

    With ``jitter`` it is half of that plus a random share of the other half ("equal jitter"), so that many
    clients failing against the same peer don't all retry in step.
    """
    delay = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return delay / 2 + random.uniform(0, delay / 2) if jitter else delay
