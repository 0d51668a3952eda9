"""What a resilience test looks at once the system has settled: every record on the broker, the audit chain, the
mails in the SMTP sink. Each reader returns plain data, so the tests can say exactly which case went wrong."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.local.stack import LocalStack
from shared import events, topics
from shared.settings import KafkaSettings


@dataclass(frozen=True)
class Record:
    """One record on the broker, reduced to what the checks need."""

    topic: str
    ce_id: str | None
    ce_type: str | None
    subject: str | None
    data: dict[str, Any]


async def read_topics(kafka: KafkaSettings, prefix: str = "ozg.") -> list[Record]:
    """Every record on every topic starting with ``prefix``, from the beginning to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    try:
        await consumer.start()
        names = sorted(name for name in await consumer.topics() if name.startswith(prefix))
        partitions = [TopicPartition(name, p) for name in names
                      for p in sorted(consumer.partitions_for_topic(name) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[Record] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for r in batch:
                    headers = {name: value.decode(errors="replace") for name, value in r.headers or ()}
                    try:
                        data = json.loads(r.value or b"null")
                    except ValueError:
                        data = None
                    found.append(Record(r.topic, headers.get("ce_id"), headers.get("ce_type"),
                                        headers.get("ce_subject"), data if isinstance(data, dict) else {}))
        return found
    finally:
        await consumer.stop()


def audit_entries(database: Path) -> Counter[str]:
    """How many entries audit's chain holds per ``ce_id`` (read-only, beside the running service)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        return Counter(dict(connection.execute("SELECT event_id, COUNT(*) FROM audit_entries GROUP BY event_id")))


def mails_by_subject(directory: Path) -> Counter[str]:
    """The SMTP sink's mails counted by subject (each names the case's reference and what happened)."""
    subjects: Counter[str] = Counter()
    for path in directory.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects[str(message["Subject"])] += 1
    return subjects


# The first words of each German subject line, by the status it announces (services/notify/templates/de).
SUBJECT_MARKS = {"submitted": "Eingangsbestätigung:", "routed": "zuständig ist", "received": "Eingang bei der Behörde"}


def status_of_subject(subject: str) -> str | None:
    """The status a mail announces, judged by its subject."""
    return next((status for status, mark in SUBJECT_MARKS.items() if mark in subject), None)


@dataclass
class Findings:
    """What went wrong, case by case; empty lists mean the run was clean."""

    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        """Note one problem (the report shows the first few of each kind)."""
        self.problems.append(problem)

    def summary(self, limit: int = 25) -> str:
        """The problems, at most ``limit`` of them, one per line."""
        shown = "\n".join(self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"\n... and {more} more" if more > 0 else "")


def check_flow(records: list[Record], audit: Counter[str], mails: Counter[str],
               cases: dict[str, str], statuses: dict[str, list[str]]) -> Findings:
    """Check every accepted case end to end.

    ``cases`` maps case id to reference; ``statuses`` the statuses each case must have been notified of.
    Returns the findings: dispatch, audit (once per event, nothing missing, nothing extra) and notification
    (one outcome per status, at most one mail, exactly one when the outcome was "sent").
    """
    findings = Findings()
    by_case: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    audited: set[str] = set()
    status_of_event: dict[str, str] = {}
    outcomes: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for record in records:
        if record.topic.endswith(topics.DLQ_SUFFIX):
            findings.add(f"dead-lettered on {record.topic}: {record.ce_type} {record.ce_id} of {record.subject}")
            continue
        if record.ce_id is None:
            findings.add(f"record without ce_id on {record.topic}")
            continue
        audited.add(record.ce_id)
        if record.subject is None:
            continue
        if record.topic.startswith(topics.DESTINATION_PREFIX) and record.ce_type == events.DISPATCHED_V1:
            by_case[record.subject]["dispatched"].add(record.ce_id)
            if record.topic != topics.destination_topic(record.data.get("destination_id", "")):
                findings.add(f"case {record.subject}: dispatched to {record.topic}, meant for "
                             f"{record.data.get('destination_id')}")
        elif record.ce_type == events.SUBMITTED_V1:
            status_of_event[record.ce_id] = "submitted"
        elif record.ce_type == events.ROUTED_V1:
            status_of_event[record.ce_id] = "routed"
        elif record.ce_type == events.STATUS_CHANGED_V1 and record.topic == topics.CASE_STATUS:
            status_of_event[record.ce_id] = str(record.data.get("status"))
        elif record.ce_type in (events.NOTIFICATION_SENT_V1, events.NOTIFICATION_FAILED_V1):
            trigger = str(record.data.get("trigger_event_id"))
            outcomes[(record.subject, trigger)][record.ce_id] = record.ce_type
    for ce_id, count in audit.items():
        if count != 1:
            findings.add(f"event {ce_id} is {count} times in the audit trail")
    for ce_id in sorted(audited - set(audit)):
        findings.add(f"event {ce_id} is on the broker but not in the audit trail")
    for ce_id in sorted(set(audit) - audited):
        findings.add(f"audit entry {ce_id} matches no event on the broker")
    notified: dict[str, Counter[str]] = defaultdict(Counter)
    sent: dict[str, set[str]] = defaultdict(set)
    for (case_id, trigger), ids in outcomes.items():
        status = status_of_event.get(trigger, f"unknown trigger {trigger}")
        notified[case_id][status] += 1
        if len(ids) != 1:
            findings.add(f"case {case_id}: {len(ids)} different outcome events for its {status} notification")
        if events.NOTIFICATION_SENT_V1 in ids.values():
            sent[case_id].add(status)
    mail_count: dict[str, Counter[str]] = defaultdict(Counter)
    by_reference = {reference: case_id for case_id, reference in cases.items()}
    for subject, count in mails.items():
        reference = next((word.rstrip(":") for word in subject.split() if word.rstrip(":") in by_reference), None)
        status = status_of_subject(subject)
        if reference is not None and status is not None:
            mail_count[by_reference[reference]][status] += count
    for case_id in cases:
        dispatched = by_case[case_id]["dispatched"]
        if len(dispatched) != 1:
            findings.add(f"case {case_id}: {len(dispatched)} dispatched event ids {sorted(dispatched)} (want 1)")
        for status in statuses[case_id]:
            if notified[case_id][status] != 1:
                findings.add(f"case {case_id}: {notified[case_id][status]} notifications of {status} (want 1)")
            mailed = mail_count[case_id][status]
            if mailed > 1 or (status in sent[case_id] and mailed != 1):
                findings.add(f"case {case_id}: {mailed} mails for {status}, outcome "
                             f"{'sent' if status in sent[case_id] else 'failed'}")
        extra = set(notified[case_id]) - set(statuses[case_id])
        if extra:
            findings.add(f"case {case_id}: notified of unexpected statuses {sorted(extra)}")
    return findings


async def settle(stack: LocalStack, check: Callable[[list[Record], Counter[str], Counter[str]], Findings],
                 timeout_s: float, then: Callable[[], Awaitable[list[str]]] | None = None) -> Findings:
    """Look at the system every two seconds until ``check`` (and then ``then``) finds nothing, or time runs out.

    Returns the last findings, so a failure names what never came right.
    """
    findings = Findings(["not checked yet"])
    deadline = time.monotonic() + timeout_s
    while findings.problems and time.monotonic() < deadline:
        await asyncio.sleep(2)
        findings = check(await read_topics(stack.kafka), audit_entries(stack.root / "audit.db"),
                         mails_by_subject(stack.root / "mail"))
        if not findings.problems and then is not None:
            findings.problems += await then()
    return findings
