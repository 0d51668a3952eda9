"""The broker goes away under the whole running system and comes back empty on the same port (Tansu keeps
nothing: topics, records and consumer offsets are gone). No service is restarted.

Meanwhile intake answers 503 with Retry-After; afterwards every service reconnects by itself, the topics are
recreated, and applications posted right after the broker's return are routed, dispatched, notified and audited,
each exactly once in effect. The burst after the return is larger than what each consumer had read before the
outage: a consumer that kept its old position on a topic that now starts again at offset 0 would skip records.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from shared import clients, topics
from shared.events import ClientKind
from tests.resilience.clients import (
    Accepted,
    Answers,
    application,
    destination_of,
    differing_statuses,
    known_everywhere,
    report_status,
    submit,
)
from tests.resilience.conftest import System
from tests.resilience.observe import Findings, audit_entries, check_flow, settle
from tests.support import partition_counts, wait_until

pytestmark = pytest.mark.e2e

BEFORE = 24  # applications before the outage: every consumer's position moves well past 0 on each partition
PARTITIONS = 3  # OZG_KAFKA_PARTITIONS' default, with which the services create their topics
DESTINATION_PARTITIONS = 1  # OZG_KAFKA_DESTINATION_PARTITIONS' default, for the destinations' topics
AFTER = 48  # applications posted at once when the broker is back: more than BEFORE on each partition


async def accept_all(http: httpx.AsyncClient, system: System, indexes: range, answers: Answers) -> list[Accepted]:
    """Post the applications ``indexes`` concurrently, each repeated until accepted."""
    intake, key = system.stack.url("intake"), system.keys["portal"]
    return list(await asyncio.gather(*(submit(http, intake, key, i, answers) for i in indexes)))


async def unready(http: httpx.AsyncClient, url: str) -> bool:
    """Whether the service at ``url`` says it cannot reach the broker."""
    answer = await http.get(f"{url}/health/ready")
    return answer.status_code == 503 and answer.json()["checks"]["broker"] is False


def flow(accepted: list[Accepted], received: set[str], audited_before: set[str]) -> Any:
    """The check of ``observe.check_flow`` for these cases, on the audit entries written since ``audited_before``."""
    cases = {a.case_id: a.reference for a in accepted}
    statuses = {a.case_id: ["submitted", "routed"] + (["received"] if a.case_id in received else []) for a in accepted}

    def check(records: Any, audit: Counter[str], mails: Counter[str]) -> Findings:
        return check_flow(records, Counter({k: v for k, v in audit.items() if k not in audited_before}), mails,
                          cases, statuses)

    return check


async def test_the_system_rides_out_a_broker_outage_without_restarts(system: System) -> None:
    stack, keys = system.stack, system.keys
    portal = {"Authorization": f"Bearer {keys['portal']}"}
    pids = {name: process.pid for name, process in stack.processes.items()}
    answers = Answers()
    async with httpx.AsyncClient(timeout=30) as http:
        await known_everywhere(http, stack, keys)
        before = await accept_all(http, system, range(BEFORE), answers)
        findings = await settle(stack, flow(before, set(), set()), timeout_s=90)
        assert not findings.problems, f"before the outage already:\n{findings.summary()}"
        audited_before = set(audit_entries(stack.root / "audit.db"))

        stack.stop_broker()
        down = await http.post(f"{stack.url('intake')}/v1/applications", json=application(BEFORE),
                               headers={**portal, "Idempotency-Key": str(uuid.uuid4())})
        assert down.status_code == 503, down.text
        assert down.json()["type"] == "urn:ozg:problem:broker-unavailable"
        assert int(down.headers["Retry-After"]) > 0
        ready = await http.get(f"{stack.url('intake')}/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["broker"] is False, ready.text

        # Every service notices the outage by itself (and so will connect afresh when the broker is back).
        for name in pids:
            await wait_until(lambda name=name: unready(http, stack.url(name)), timeout_s=30)

        stack.start_broker()
        after = await accept_all(http, system, range(BEFORE + 1, BEFORE + 1 + AFTER), answers)
        # The status path too: the back office of every third case reports that it received it.
        received = {a.case_id for a in after[::3]}
        routing = stack.url("routing")
        destinations = {i: await destination_of(http, routing, i) for i in range(6)}
        await asyncio.gather(*(
            report_status(http, routing, keys["destinations"][destinations[a.index % 6]], a.case_id, "received",
                          answers)
            for a in after if a.case_id in received))
        findings = await settle(
            stack, flow(after, received, audited_before), timeout_s=120,
            then=lambda: differing_statuses(http, stack.url("intake"), keys["portal"],
                                             {a.case_id: "received" if a.case_id in received else "routed"
                                              for a in after}))
        assert not findings.problems, f"after the outage:\n{findings.summary()}\nlogs in {stack.root / 'logs'}"
        assert not answers.unexpected(), f"answers a valid request must never get: {answers.seen}"
        # The services recreated every topic they use, destination topics included, as configured (3 partitions, 1
        # for a destination's, each with its dead-letter twin): none was left to the broker's auto-creation, which
        # production lacks (Tansu's gives a topic 4 partitions).
        counts = await partition_counts(stack.kafka)
        expected = {name: DESTINATION_PARTITIONS if name.startswith(topics.DESTINATION_PREFIX) else PARTITIONS
                    for name in counts}
        assert counts == expected, counts
        destinations = [name for name in counts
                        if name.startswith(topics.DESTINATION_PREFIX) and not name.endswith(topics.DLQ_SUFFIX)]
        assert {topics.dlq_topic(name) for name in destinations} <= set(counts), counts

        # Every service is ready again, and it is still the same process: it reconnected by itself.
        await asyncio.to_thread(stack.wait_ready, 60)
        # A key issued now, on the broker that came back empty, reaches intake: its ozg.clients consumer follows the
        # new topic from its start, not from where it was on the old one.
        _, new_key = await clients.issue(stack.kafka, kind=ClientKind.PORTAL, name="issued after the outage")
        await known_everywhere(http, stack, {**keys, "portal": new_key})
        assert {name: process.pid for name, process in stack.processes.items()} == pids
        verdict = (await http.get(f"{stack.url('audit')}/v1/verify",
                                  headers={"Authorization": f"Bearer {keys['auditor']}"})).json()
        assert verdict["intact"] is True, verdict
