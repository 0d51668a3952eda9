"""End to end on the whole local system: a fixed rate of applications for a fixed time, each followed from
acceptance to its dispatched event in the audit trail, by the audit entries' own times."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench import stats, system
from bench.load import WrkSettings, wrk
from services.audit.models import ENTRIES
from shared import db, events

# Connections wrk spreads the fixed rate over: at 500/s each sends every 128 ms, so answers up to that slow keep
# the rate; a slower system gets fewer requests, counted as late.
CONNECTIONS = 64


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


def warm_up(url: str, token: str, body: Path, audit_db: Path, timeout_s: float = 60) -> None:
    """One application all the way into the audit trail before the measurement: every consumer has joined its
    group and every topic exists, so the figures are those of the steady state."""
    request = urllib.request.Request(  # noqa: S310 - the local stack's URL
        f"{url}/v1/applications", data=body.read_bytes(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Idempotency-Key": uuid.uuid4().hex},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        case_id = json.loads(response.read())["case_id"]
    deadline = time.monotonic() + timeout_s
    while "audited" not in trail_times(audit_db).get(case_id, {}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the warm-up application did not reach the audit trail in {timeout_s} s")
        time.sleep(0.5)


def run(
    workdir: Path, rate: float = 500, seconds: float = 60, python: str = sys.executable
) -> tuple[dict[str, Any], dict[str, float]]:
    """The whole system on free ports under ``workdir`` (the services run by ``python``), loaded by wrk at ``rate``
    for ``seconds``; returns the figures and each service's peak RSS."""
    body = system.application_body(workdir / "e2e-application.json")
    root = workdir / "e2e"
    with system.running(root, ["intake", "routing", "notify", "audit"], python) as stack:
        token = system.portal_key(stack)
        warm_up(stack.url("intake"), token, body, root / "audit.db")
        sent = wrk(stack.url("intake"), body, token,
                   WrkSettings(connections=CONNECTIONS, seconds=int(seconds), rate=rate),
                   cases_file=root / "accepted")
        cases = wait_for_trail(root / "audit.db", set(sent["case_ids"]), patience_s=20)
        rss = system.service_rss(stack)
    accepted = set(sent["case_ids"])
    complete = [cases[c] for c in accepted if {"submitted", "audited"} <= cases.get(c, {}).keys()]
    in_trail = [(t["audited"] - t["submitted"]).total_seconds() * 1000 for t in complete]
    dispatched = [(t["dispatched"] - t["submitted"]).total_seconds() * 1000 for t in complete]
    result: dict[str, Any] = {
        "rate": sent["rate"],
        "target_rate": rate,
        "seconds": round(sent["duration_us"] / 1e6, 1),
        "accepted": len(accepted),
        "rejected": sent["rejected"] + sent["socket_errors"],
        "late_requests": sent["late"],
        "http_p50_ms": sent["p50_ms"],
        "http_p99_ms": sent["p99_ms"],
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
        }
    return result, rss
