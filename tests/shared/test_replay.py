"""Dead-letter replay against the real broker: records a real consumer dead-lettered while its database lacked a
table are replayed once the table exists and take effect exactly once; a dry run changes nothing; a second replay
replays nothing new; the CLI never prints a payload."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import anyio.to_thread
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaMessage
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlmodel import Session, SQLModel

from shared import events, replay
from shared.db import make_engine
from shared.envelope import OutgoingEvent, build_event
from shared.idempotency import ProcessedEvent, first_delivery
from shared.kafka import make_broker, publish, read_event
from shared.settings import KafkaSettings
from shared.topics import TopicSpec, dlq_topic, ensure_topics
from tests.factories import submitted
from tests.support import consume, produce, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = "replay-test"


def event() -> OutgoingEvent:
    data = submitted()
    return build_event(event_type=events.SUBMITTED_V1, source="/test", subject=str(data.case_id), data=data)


def apply(engine: Engine, event_id: str) -> None:
    """An idempotent consumer's effect: one row per event, claimed with the processed-event record."""
    with Session(engine) as session:
        if first_delivery(session, CONSUMER, event_id):
            session.execute(text("INSERT INTO effects (event_id) VALUES (:id)"), {"id": event_id})
        session.commit()


def effects(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(text("SELECT event_id FROM effects ORDER BY event_id"))]


async def end_offset(settings: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def cli(settings: KafkaSettings, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.replay", *args, cwd=ROOT,
        env={**os.environ, "OZG_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("text", "expected"), [("0:5", (0, 5, 5)), ("2:3-9", (2, 3, 9))])
def test_offset_ranges(text: str, expected: tuple[int, int, int]) -> None:
    assert replay.parse_range(text) == expected


@pytest.mark.parametrize("text", ["5", "0:9-3", "a:1", "0:1-"])
def test_bad_offset_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"PARTITION|before"):
        replay.parse_range(text)


async def test_dead_letters_are_replayed_once_the_cause_is_fixed(kafka_settings: KafkaSettings,
                                                                 tmp_path: Path) -> None:
    topic = f"test.replay.{uuid.uuid4().hex[:8]}"
    dlq = dlq_topic(topic)
    # One partition: the dead letters' offsets follow the order of publishing.
    await ensure_topics(kafka_settings.model_copy(update={"partitions": 1}), [TopicSpec(topic), TopicSpec(dlq)])
    engine = make_engine(f"sqlite:///{tmp_path / 'consumer.db'}")
    SQLModel.metadata.create_all(engine, tables=[ProcessedEvent.__table__])  # type: ignore[list-item]
    # The table of the effect takes no event id (a faulty migration): every event fails until it is mended. (A
    # missing table would be an OperationalError, which the consumer waits out instead of dead-lettering.)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE effects (event_id VARCHAR PRIMARY KEY CHECK (length(event_id) < 8))"))
    broker, _ = make_broker(kafka_settings, service=CONSUMER, registry=CollectorRegistry())

    handled: list[str] = []  # deliveries that completed, taking effect or dropped as repeats

    async def handle(msg: KafkaMessage) -> None:
        envelope = read_event(msg)
        await anyio.to_thread.run_sync(apply, engine, envelope.id)
        handled.append(envelope.id)

    broker.subscriber(topic, group_id=f"test-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                      ack_policy=AckPolicy.NACK_ON_ERROR)(handle)
    first, second = event(), event()
    group = f"ozg-replay-test-{uuid.uuid4().hex[:8]}"
    await broker.start()
    try:
        await publish(broker, topic, first)
        await produce(kafka_settings, topic, b"not a cloudevent", key=b"poison")
        await publish(broker, topic, second)
        dead = await consume(kafka_settings, dlq, 3)
        assert [r.offset for r in dead] == [0, 1, 2]

        found = await replay.pending(kafka_settings, topic, group=group)
        report = replay.overview(found, limit=10)
        assert report["pending"] == 3
        assert {(row["consumer"], row["error"], row["count"]) for row in report["by_error"]} == {
            (CONSUMER, "IntegrityError", 2), (CONSUMER, "InvalidEvent", 1)}
        assert [(r["offset"], r["ce_id"]) for r in report["records"]] == [
            (0, first.event_id), (1, None), (2, second.event_id)]

        # The cause is fixed.
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE effects"))
            connection.execute(text("CREATE TABLE effects (event_id VARCHAR PRIMARY KEY)"))

        dry = await replay.replay(kafka_settings, topic, replay.Selection(everything=True), group=group,
                                  dry_run=True)
        assert [r.offset for r in dry.replayed] == [0, 1, 2]
        assert await end_offset(kafka_settings, topic) == 3  # nothing sent
        assert len((await replay.pending(kafka_settings, topic, group=group)).records) == 3  # nothing committed

        done = await replay.replay(kafka_settings, dlq, replay.Selection(ce_ids=frozenset(
            {first.event_id, second.event_id})), group=group)
        assert [r.offset for r in done.replayed] == [0, 2]
        assert [r.offset for r in done.passed_over] == [1]  # the poison record stays behind
        assert done.pending.committed == {0: 3}
        await wait_until(lambda: len(handled) == 2)
        assert sorted(effects(engine)) == sorted([first.event_id, second.event_id])

        # The replayed records are the originals, without the dead-letter headers.
        originals = await consume(kafka_settings, topic, 5)
        for original, again in ((originals[0], originals[3]), (originals[2], originals[4])):
            assert (again.key, again.value, again.headers) == (original.key, original.value, original.headers)
        assert not [name for name, _ in originals[3].headers if name.startswith("x-ozg-dlq-")]

        again = await replay.replay(kafka_settings, topic, replay.Selection(everything=True), group=group)
        assert again.replayed == []
        assert await end_offset(kafka_settings, topic) == 5

        # A deliberate repeat is harmless (the consumer is idempotent) and moves no position back.
        repeat = await replay.replay(kafka_settings, topic, replay.Selection(ranges=((0, 0, 0),)), group=group,
                                     from_beginning=True)
        assert [r.offset for r in repeat.replayed] == [0]
        assert repeat.pending.committed == {0: 3}
        await wait_until(lambda: handled.count(first.event_id) == 2)
        assert sorted(effects(engine)) == sorted([first.event_id, second.event_id])
        assert await end_offset(kafka_settings, dlq) == 3  # nothing failed again

        code, out, _ = await cli(kafka_settings, "show", topic, "--group", group, "--from-beginning")
        assert code == 0
        shown = json.loads(out)
        assert shown["pending"] == 3
        assert shown["group_position"] == {"0": 3}
        for secret in ("Mustermann", "not a cloudevent", "poison"):
            assert secret not in out  # neither payloads nor keys
        code, out, _ = await cli(kafka_settings, "show", topic, "--group", group)
        assert (code, json.loads(out)["pending"]) == (0, 0)
        code, out, _ = await cli(kafka_settings, "replay", dlq, "--group", group, "--all", "--dry-run")
        assert (code, json.loads(out)["replayed"]) == (0, [])
    finally:
        await broker.stop()
        engine.dispose()


async def test_cli_refuses_a_missing_topic_and_a_replay_without_selection(kafka_settings: KafkaSettings) -> None:
    code, _, err = await cli(kafka_settings, "show", f"test.none.{uuid.uuid4().hex[:8]}")
    assert code == 1
    assert "no dead-letter topic" in err
    code, _, err = await cli(kafka_settings, "replay", "ozg.cases.status")
    assert code == 2
    assert "--all or --offsets/--ce-id" in err
