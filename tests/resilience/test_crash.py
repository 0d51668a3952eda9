"""SPEC §9 "crash": a steady stream of applications while every consuming service is killed with SIGKILL once, at a
random moment, and restarted on the same database. Nothing accepted may be lost, nothing audited twice, nobody
notified twice.

Size and pace come from the environment: ``OZG_CRASH_APPLICATIONS`` (default 300), ``OZG_CRASH_RATE`` (applications
per second, default 15); ``OZG_CRASH_SEED`` replays the kill moments of a failed run (every message names its seed).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import httpx
import pytest

from tests.resilience.clients import (
    Accepted,
    Answers,
    destination_of,
    differing_statuses,
    known_everywhere,
    report_status,
    stream,
    submit,
)
from tests.resilience.conftest import System
from tests.resilience.observe import check_flow, settle

pytestmark = pytest.mark.e2e

COUNT = int(os.environ.get("OZG_CRASH_APPLICATIONS", "300"))
RATE = float(os.environ.get("OZG_CRASH_RATE", "15"))
SEED = int(os.environ.get("OZG_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
# Every service that consumes a topic (intake follows routed, unroutable and the case status).
CONSUMERS = ("intake", "routing", "notify", "audit")
# Every n-th case's back office reports "received", so the status path crashes too.
RECEIVED_EVERY = 3


async def crash_each(system: System, moments: list[tuple[float, str]], log: list[str]) -> None:
    """Kill each service with SIGKILL at its moment (seconds after the start) and start it again at once."""
    start = time.monotonic()
    for at, name in moments:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        system.stack.kill(name)
        system.stack.start_service(name)
        log.append(f"{name} killed at {time.monotonic() - start:.1f}s")
    await asyncio.to_thread(system.stack.wait_ready, 120)


async def test_every_accepted_application_survives_a_kill_of_each_service(system: System) -> None:
    stack = system.stack
    rng = random.Random(SEED)
    duration = COUNT / RATE
    moments = sorted((rng.uniform(0.1, 0.8) * duration, name) for name in CONSUMERS)
    killed: list[str] = []
    answers = Answers()

    def context() -> str:
        return (f"seed {SEED} (rerun with OZG_CRASH_SEED={SEED} OZG_CRASH_APPLICATIONS={COUNT} "
                f"OZG_CRASH_RATE={RATE}); {'; '.join(killed)}; logs in {stack.root / 'logs'}")

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as http:
        await known_everywhere(http, stack, system.keys)
        destinations = {i: await destination_of(http, stack.url("routing"), i) for i in range(6)}

        async def apply(index: int) -> Accepted:
            accepted = await submit(http, stack.url("intake"), system.keys["portal"], index, answers)
            if index % RECEIVED_EVERY == 0:
                key = system.keys["destinations"][destinations[index % 6]]
                await report_status(http, stack.url("routing"), key, accepted.case_id, "received", answers)
            return accepted

        crashes = asyncio.create_task(crash_each(system, moments, killed))
        accepted = await stream(COUNT, RATE, apply)
        await crashes

        cases = {a.case_id: a.reference for a in accepted}
        statuses = {a.case_id: ["submitted", "routed"] + (["received"] if a.index % RECEIVED_EVERY == 0 else [])
                    for a in accepted}
        findings = await settle(
            stack, lambda records, audit, mails: check_flow(records, audit, mails, cases, statuses),
            timeout_s=120 + COUNT / 10,
            then=lambda: differing_statuses(http, stack.url("intake"), system.keys["portal"],
                                             {c: s[-1] for c, s in statuses.items()}))
        assert len(accepted) == COUNT
        assert not findings.problems, f"{context()}\n{findings.summary()}"
        assert not answers.unexpected(), f"{context()}: answers a valid request must never get: {answers.seen}"
        verdict: dict[str, Any] = (await http.get(
            f"{stack.url('audit')}/v1/verify", headers={"Authorization": f"Bearer {system.keys['auditor']}"})).json()
        assert verdict["intact"] is True, f"{context()}: {verdict}"
