"""End to end on the whole local system: a fixed rate of applications for a fixed time, each followed from
acceptance to its dispatched event in the audit trail, by the audit entries' own times."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench import stats, system
from services.audit.models import ENTRIES
from shared import db, events

# How long requests still open when the sending ends may take to be answered.
GRACE_S = 30.0
# Requests waiting for an answer at most; beyond, the generator sheds load rather than queue without bound.
MAX_IN_FLIGHT = 256


@dataclass
class Submissions:
    """What the load generator saw."""

    accepted: dict[str, float] = field(default_factory=dict)  # case_id -> client-side latency (s)
    rejected: dict[int, int] = field(default_factory=dict)  # status (0: no answer) -> count
    seconds: float = 0.0
    late: int = 0  # requests sent more than 100 ms behind their schedule (the generator fell behind)
    shed: int = 0  # requests not sent at all: MAX_IN_FLIGHT were still unanswered (the system fell behind)


async def submit_at_rate(url: str, token: str, body: bytes, rate: float, seconds: float) -> Submissions:
    """Post ``rate`` applications per second for ``seconds``, open loop: each request leaves at its scheduled time
    whether or not earlier ones were answered, so a slow system cannot slow the load down (with MAX_IN_FLIGHT
    unanswered, a request is shed and counted instead)."""
    out = Submissions()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=GRACE_S) as client:

        async def post() -> None:
            started = time.perf_counter()
            try:
                response = await client.post("/v1/applications", content=body,
                                              headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
            except httpx.HTTPError:
                out.rejected[0] = out.rejected.get(0, 0) + 1
                return
            if response.status_code == 202:
                out.accepted[response.json()["case_id"]] = time.perf_counter() - started
            else:
                out.rejected[response.status_code] = out.rejected.get(response.status_code, 0) + 1

        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        tasks: set[asyncio.Task[None]] = set()
        for index in range(total):
            due = start + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                out.late += 1
            if len(tasks) >= MAX_IN_FLIGHT:
                out.shed += 1
                continue
            task = asyncio.create_task(post())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        out.seconds = loop.time() - start
        # An overloaded system gets a bounded grace period; what is still unanswered then counts as refused.
        _, unanswered = await asyncio.wait(tasks, timeout=GRACE_S) if tasks else (set(), set())
        for task in unanswered:
            task.cancel()
        if unanswered:
            out.rejected[0] = out.rejected.get(0, 0) + len(unanswered)
            await asyncio.wait(unanswered)
    return out


def trail_times(audit_db: Path) -> dict[str, dict[str, datetime]]:
    """Per case id: the submitted event's time, the dispatched event's time and when audit recorded it."""
    engine = db.make_engine(f"sqlite:///{audit_db}")
    query = select(ENTRIES.c.subject, ENTRIES.c.event_type, ENTRIES.c.event_time, ENTRIES.c.recorded_at).where(
        ENTRIES.c.event_type.in_([events.SUBMITTED_V1, events.DISPATCHED_V1]))
    cases: dict[str, dict[str, datetime]] = {}
    try:
        with engine.connect() as connection:
            for subject, event_type, event_time, recorded_at in connection.execute(query):
                times = cases.setdefault(subject, {})
                if event_type == events.SUBMITTED_V1:
                    times["submitted"] = event_time
                else:
                    times["dispatched"] = event_time
                    times["audited"] = recorded_at
    finally:
        engine.dispose()
    return cases


def wait_for_trail(audit_db: Path, case_ids: set[str], patience_s: float) -> dict[str, dict[str, datetime]]:
    """Read the trail until every case's dispatched event is in it, or nothing new arrived for ``patience_s``."""
    seen, last_progress = -1, time.monotonic()
    while True:
        cases = trail_times(audit_db)
        done = sum(1 for case_id in case_ids if "audited" in cases.get(case_id, {}))
        if done == len(case_ids):
            return cases
        if done > seen:
            seen, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > patience_s:
            return cases
        time.sleep(1)


def run(workdir: Path, rate: float = 500, seconds: float = 60) -> tuple[dict[str, Any], dict[str, float]]:
    """The whole system on free ports under ``workdir``; returns the figures and each service's peak RSS."""
    body = json.dumps(json.loads(system.application_body(workdir / "e2e-application.json").read_text())).encode()
    root = workdir / "e2e"
    with system.running(root, ["intake", "routing", "notify", "audit"]) as stack:
        token = system.portal_key(stack)
        sent = asyncio.run(submit_at_rate(stack.url("intake"), token, body, rate, seconds))
        cases = wait_for_trail(root / "audit.db", set(sent.accepted), patience_s=20)
        rss = system.service_rss(stack)
    accepted = set(sent.accepted)
    complete = [cases[c] for c in accepted if {"submitted", "audited"} <= cases.get(c, {}).keys()]
    in_trail = [(t["audited"] - t["submitted"]).total_seconds() * 1000 for t in complete]
    dispatched = [(t["dispatched"] - t["submitted"]).total_seconds() * 1000 for t in complete]
    http = [s * 1000 for s in sent.accepted.values()]
    result: dict[str, Any] = {
        "rate": len(accepted) / sent.seconds if sent.seconds else 0.0,
        "target_rate": rate,
        "seconds": round(sent.seconds, 1),
        "accepted": len(accepted),
        "rejected": sum(sent.rejected.values()),
        "rejected_by_status": {str(k): v for k, v in sent.rejected.items()},
        "late_requests": sent.late,
        "shed_requests": sent.shed,
        "lost": len(accepted) - len(complete),
    }
    if in_trail:
        result |= {
            "p50_ms": stats.percentile(in_trail, 50),
            "p95_ms": stats.percentile(in_trail, 95),
            "p99_ms": stats.percentile(in_trail, 99),
            "max_ms": max(in_trail),
            "dispatch_p50_ms": stats.percentile(dispatched, 50),
            "dispatch_p99_ms": stats.percentile(dispatched, 99),
            "http_p50_ms": stats.percentile(http, 50),
            "http_p99_ms": stats.percentile(http, 99),
        }
    return result, rss
