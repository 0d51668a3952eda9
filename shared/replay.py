"""Dead-letter replay for operators: ``python -m shared.replay show|replay <topic>``.

``show`` lists what waits on ``<topic>.dlq`` — counts by consumer, error and reason, and per record its partition,
offset, ``ce_id`` and ``ce_type``, never a key or a payload (they may hold personal data). ``replay`` publishes the
selected records (all, offset ranges, event ids) to the topic named in ``x-ozg-dlq-topic`` with their original
key, value and headers, ``x-ozg-dlq-*`` stripped, in their order on the dead-letter topic.

What was replayed is remembered as a consumer-group position (group ``ozg-replay`` unless ``--group``): on each
partition, the position moves past the last record replayed there, so a second replay does not send it again, and
``show`` lists only what comes after. Records before that position that were not selected are reported as passed
over; they stay on the dead-letter topic, within reach of ``--from-beginning``. Replaying an event twice is harmless
all the same: every consumer is idempotent on ``ce_id``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.settings import KafkaSettings
from shared.topics import DLQ_SUFFIX, dlq_topic

DEFAULT_GROUP = "ozg-replay"
DLQ_HEADER_PREFIX = "x-ozg-dlq-"
_RANGE = re.compile(r"^(\d+):(\d+)(?:-(\d+))?$")


class NoSuchTopic(LookupError):
    """The dead-letter topic does not exist (no consumer ever dead-lettered anything from its topic)."""


@dataclass(frozen=True)
class DeadLetter:
    """One record on a dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """A header's value as text (the last one of that name), or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1].decode(errors="replace") if found else None

    def original_topic(self, dlq: str) -> str:
        """Where the record came from: ``x-ozg-dlq-topic``, else the dead-letter topic's name without ``.dlq``."""
        return self.header(f"{DLQ_HEADER_PREFIX}topic") or dlq.removesuffix(DLQ_SUFFIX)

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The record's own headers (CloudEvents attributes, trace context) without the dead-letter ones."""
        return [(name, value) for name, value in self.headers if not name.startswith(DLQ_HEADER_PREFIX)]

    def reason(self) -> str:
        """The first line of ``x-ozg-dlq-reason``: later lines of some errors (SQL parameters) may quote data."""
        lines = (self.header(f"{DLQ_HEADER_PREFIX}reason") or "").splitlines()
        return lines[0][:200] if lines else ""

    def describe(self) -> dict[str, Any]:
        """What an operator may see of the record: ids, types and the error, never its key or payload."""
        return {
            "partition": self.partition,
            "offset": self.offset,
            "ce_id": self.header("ce_id"),
            "ce_type": self.header("ce_type"),
            "consumer": self.header(f"{DLQ_HEADER_PREFIX}consumer"),
            "error": self.header(f"{DLQ_HEADER_PREFIX}error"),
        }


@dataclass(frozen=True)
class Selection:
    """Which pending records to replay: all of them, offset ranges per partition, or event ids (``ce_id``)."""

    everything: bool = False
    ranges: tuple[tuple[int, int, int], ...] = ()  # (partition, first offset, last offset), inclusive
    ce_ids: frozenset[str] = frozenset()

    def __call__(self, record: DeadLetter) -> bool:
        return (
            self.everything
            or any(p == record.partition and first <= record.offset <= last for p, first, last in self.ranges)
            or record.header("ce_id") in self.ce_ids
        )


def parse_range(text: str) -> tuple[int, int, int]:
    """``PARTITION:OFFSET`` or ``PARTITION:FIRST-LAST`` (inclusive) as (partition, first, last)."""
    match = _RANGE.match(text)
    if match is None:
        raise ValueError(f"not PARTITION:OFFSET or PARTITION:FIRST-LAST: {text!r}")
    partition, first = int(match[1]), int(match[2])
    last = int(match[3]) if match[3] is not None else first
    if last < first:
        raise ValueError(f"range ends before it starts: {text!r}")
    return partition, first, last


@dataclass
class Pending:
    """The records of a dead-letter topic between a start (the group's position) and the end at reading time."""

    topic: str
    records: list[DeadLetter]
    positions: dict[int, int]  # the group's committed position per partition (0 where none was committed)
    committed: dict[int, int] = field(default_factory=dict)  # what a replay moved the position to


@contextlib.asynccontextmanager
async def _consumer(settings: KafkaSettings, dlq: str, group: str) -> AsyncIterator[
        tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", request_timeout_ms=settings.request_timeout_ms,
        **settings.client_options(),
    )
    await consumer.start()
    try:
        # topics() fetches the cluster's metadata: a consumer without a subscription knows no partitions yet.
        if dlq not in await consumer.topics():
            raise NoSuchTopic(dlq)
        partitions = consumer.partitions_for_topic(dlq) or set()
        assigned = [TopicPartition(dlq, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        yield consumer, assigned
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, assigned: list[TopicPartition], *, from_beginning: bool) -> Pending:
    start = await consumer.beginning_offsets(assigned)
    end = await consumer.end_offsets(assigned)
    positions: dict[int, int] = {}
    for tp in assigned:
        committed = await consumer.committed(tp)
        positions[tp.partition] = committed if committed is not None else 0
        consumer.seek(tp, start[tp] if from_beginning else max(start[tp], positions[tp.partition]))
    records: list[ConsumerRecord[bytes, bytes]] = []

    async def behind() -> bool:
        return any([await consumer.position(tp) < end[tp] for tp in assigned])

    while await behind():
        batch = await consumer.getmany(*assigned, timeout_ms=1000)
        for tp, messages in batch.items():
            records += [m for m in messages if m.offset < end[tp]]
    return Pending(
        topic=assigned[0].topic,
        records=[DeadLetter(r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                 for r in sorted(records, key=lambda r: (r.partition, r.offset))],
        positions=positions,
    )


def as_dlq(topic: str) -> str:
    """The dead-letter topic meant: ``topic`` itself if it is one, else its dead-letter twin."""
    return topic if topic.endswith(DLQ_SUFFIX) else dlq_topic(topic)


async def pending(settings: KafkaSettings, topic: str, *, group: str = DEFAULT_GROUP,
                  from_beginning: bool = False) -> Pending:
    """The records of ``topic``'s dead-letter topic after the group's position (or all of them)."""
    async with _consumer(settings, as_dlq(topic), group) as (consumer, assigned):
        return await _read(consumer, assigned, from_beginning=from_beginning)


@dataclass
class Replay:
    """What a replay did (or, dry, would do)."""

    replayed: list[DeadLetter]
    passed_over: list[DeadLetter]
    pending: Pending


async def replay(settings: KafkaSettings, topic: str, selection: Selection, *, group: str = DEFAULT_GROUP,
                 from_beginning: bool = False, dry_run: bool = False) -> Replay:
    """Publish the selected dead letters to their original topics and move the group's position past them."""
    dlq = as_dlq(topic)
    async with _consumer(settings, dlq, group) as (consumer, assigned):
        found = await _read(consumer, assigned, from_beginning=from_beginning)
        chosen = [record for record in found.records if selection(record)]
        last = {record.partition: record.offset for record in chosen}
        passed_over = [r for r in found.records if not selection(r) and r.offset < last.get(r.partition, -1)]
        # Never move a position back: a --from-beginning replay must not make earlier replays pending again.
        moves = {p: max(found.positions[p], offset + 1) for p, offset in last.items()}
        if not dry_run and chosen:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=settings.idempotence,
                request_timeout_ms=settings.request_timeout_ms, **settings.client_options(),
            )
            await producer.start()
            try:
                # One at a time, in dead-letter order: a case's events keep their order on the original topic.
                for record in chosen:
                    await producer.send_and_wait(record.original_topic(dlq), value=record.value, key=record.key,
                                                 headers=record.original_headers())
            finally:
                await producer.stop()
            await consumer.commit({TopicPartition(dlq, p): offset for p, offset in moves.items()})
            found.committed = moves
        return Replay(replayed=chosen, passed_over=passed_over, pending=found)


def overview(found: Pending, limit: int) -> dict[str, Any]:
    """The ``show`` report: counts by consumer, error and reason, and the first ``limit`` records."""
    counts = Counter(
        (r.original_topic(found.topic), r.header(f"{DLQ_HEADER_PREFIX}consumer"),
         r.header(f"{DLQ_HEADER_PREFIX}error"), r.reason())
        for r in found.records
    )
    return {
        "dlq": found.topic,
        "group_position": {str(p): o for p, o in found.positions.items()},
        "pending": len(found.records),
        "by_error": [{"topic": t, "consumer": c, "error": e, "reason": why, "count": n}
                     for (t, c, e, why), n in counts.most_common()],
        "records": [r.describe() for r in found.records[:limit]],
    }


def outcome(done: Replay, *, dry_run: bool) -> dict[str, Any]:
    """The ``replay`` report."""
    dlq = done.pending.topic
    return {
        "dlq": dlq,
        "dry_run": dry_run,
        "replayed": [{**r.describe(), "to": r.original_topic(dlq)} for r in done.replayed],
        "passed_over": [r.describe() for r in done.passed_over],
        "group_position": {str(p): o for p, o in {**done.pending.positions, **done.pending.committed}.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the broker comes from ``OZG_KAFKA_BOOTSTRAP_SERVERS``."""
    parser = argparse.ArgumentParser(prog="python -m shared.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("topic", help="the dead-letter topic, or the topic whose dead letters are meant")
    common.add_argument("--group", default=DEFAULT_GROUP, help="consumer group keeping the replay position")
    common.add_argument("--from-beginning", action="store_true",
                        help="read the whole dead-letter topic, not only what follows the group's position")
    show_p = sub.add_parser("show", parents=[common], help="what waits on the dead-letter topic (no payloads)")
    show_p.add_argument("--limit", type=int, default=100, help="records to list (counts are always complete)")
    replay_p = sub.add_parser("replay", parents=[common], help="publish records back to their original topic")
    which = replay_p.add_argument_group("which records (--offsets and --ce-id combine)")
    which.add_argument("--all", action="store_true", help="every pending record")
    which.add_argument("--offsets", action="append", default=[], metavar="P:FIRST[-LAST]",
                       help="offsets on the dead-letter topic's partition P (repeatable)")
    which.add_argument("--ce-id", action="append", default=[], help="an event's ce_id (repeatable)")
    replay_p.add_argument("--dry-run", action="store_true", help="show what would be replayed; send nothing")
    args = parser.parse_args(argv)
    settings = KafkaSettings()
    try:
        if args.command == "show":
            found = asyncio.run(pending(settings, args.topic, group=args.group, from_beginning=args.from_beginning))
            print(json.dumps(overview(found, args.limit), indent=2))
            return 0
        if args.all == bool(args.offsets or args.ce_id):
            parser.error("replay needs either --all or --offsets/--ce-id")
        try:
            selection = Selection(args.all, tuple(parse_range(r) for r in args.offsets), frozenset(args.ce_id))
        except ValueError as exc:
            parser.error(str(exc))
        done = asyncio.run(replay(settings, args.topic, selection, group=args.group,
                                  from_beginning=args.from_beginning, dry_run=args.dry_run))
        print(json.dumps(outcome(done, dry_run=args.dry_run), indent=2))
        return 0
    except NoSuchTopic as exc:
        print(f"no dead-letter topic {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
