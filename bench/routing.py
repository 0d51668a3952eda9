"""Routing's cases per second (one process, from a pre-filled ``ozg.applications.submitted`` to the destination
topics) against a bare aiokafka consume→produce loop on the same broker and the same records.

Both rates are taken the same way: from the Kafka timestamps of the records they produced (first to last), so
neither start-up nor the reading back counts.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import stats, system
from deploy.local.__main__ import first_application
from services.routing.settings import Settings as RoutingSettings
from shared import events, topics
from shared.envelope import build_event
from shared.events import ApplicationSubmitted, ClientKind
from shared.settings import KafkaSettings

BARE_OUT = "bench.bare.out"
DESTINATIONS = r"^ozg\.dest\.[0-9a-f-]+$"


def submitted_events(count: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``count`` submitted events of the demo application (each its own case), as Kafka key, value, headers."""
    body = first_application()
    client_id = uuid.uuid4()
    out = []
    for index in range(count):
        case_id = uuid.uuid4()
        data = ApplicationSubmitted(
            case_id=case_id, reference=f"OZG-2026-BNCH-{index:04X}"[-18:], leika_key=body["leika_key"],
            region=body["region"], applicant=body["applicant"], form=body["form"], client_id=client_id,
            client_kind=ClientKind.PORTAL, submitted_at=datetime.now(UTC),
        )
        event = build_event(event_type=events.SUBMITTED_V1, source="/ozg/intake", subject=str(case_id), data=data)
        out.append((event.key, event.value, [(k, v.encode()) for k, v in event.headers.items()]))
    return out


async def prefill(kafka: KafkaSettings, count: int) -> None:
    """Create the standard topics and put ``count`` submitted events on ``ozg.applications.submitted``."""
    await topics.ensure_topics(kafka, [*topics.standard_topics(), topics.TopicSpec(BARE_OUT)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topics.SUBMITTED, value, key=key, headers=headers)
                   for key, value, headers in submitted_events(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare_loop(kafka: KafkaSettings, count: int, batch: int) -> None:
    """The baseline: consume ``count`` records in batches, produce each to another topic with its key and
    headers (acks=all, acknowledgements gathered per batch), commit; nothing else."""
    consumer = AIOKafkaConsumer(topics.SUBMITTED, bootstrap_servers=kafka.bootstrap_servers,
                                group_id=f"bench-bare-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                                enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        done = 0
        while done < count:
            records = [r for rs in (await consumer.getmany(timeout_ms=20, max_records=batch)).values() for r in rs]
            futures = [await producer.send(BARE_OUT, r.value, key=r.key, headers=list(r.headers)) for r in records]
            await asyncio.gather(*futures)
            await consumer.commit()
            done += len(records)
    finally:
        await producer.stop()
        await consumer.stop()


async def output_rate(kafka: KafkaSettings, count: int, timeout_s: float, **subscription: Any) -> dict[str, Any]:
    """Read ``count`` records of the subscription from the beginning; their rate from the first record's timestamp
    to the last one's."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=f"bench-{uuid.uuid4().hex[:8]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, metadata_max_age_ms=1000)
    consumer.subscribe(**subscription)
    await consumer.start()
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(stamps) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                stamps.extend(r.timestamp for r in records)
    finally:
        await consumer.stop()
    if len(stamps) < 2:
        return {"rate": 0.0, "records": len(stamps), "seconds": 0.0}
    seconds = (max(stamps) - min(stamps)) / 1000
    return {"rate": (len(stamps) - 1) / seconds if seconds else 0.0, "records": len(stamps), "seconds": seconds}


def run(
    workdir: Path, count: int = 10_000, profile: Path | None = None, python: str = sys.executable
) -> tuple[dict[str, Any], dict[str, float]]:
    """Both loops over the same ``count`` pre-filled records on one broker (routing run by ``python``); returns the
    figures and routing's peak RSS. With ``profile`` (a directory), py-spy samples routing's first 15 s into
    ``routing.txt`` there."""
    batch = RoutingSettings().batch_max_records
    with system.running(workdir / "routing", [], python) as stack:
        kafka = stack.kafka
        asyncio.run(prefill(kafka, count))
        asyncio.run(bare_loop(kafka, count, batch))
        bare = asyncio.run(output_rate(kafka, count, 60, topics=[BARE_OUT]))
        stack.start_service("routing")
        stack.wait_ready(services=("routing",))
        with system.profiled(stack.processes["routing"].pid, profile and profile / "routing.txt", 15):
            routed = asyncio.run(output_rate(kafka, count, 240, pattern=DESTINATIONS))
        rss = system.service_rss(stack)
    if routed["records"] != count or bare["records"] != count:
        raise RuntimeError(f"expected {count} records each, routing gave {routed['records']}, "
                           f"the bare loop {bare['records']}")
    return {
        "rate": routed["rate"],
        "baseline": bare["rate"],
        "ratio": stats.ratio(routed["rate"], bare["rate"]),
        "cases": count,
        "seconds": routed["seconds"],
        "baseline_seconds": bare["seconds"],
        "batch": batch,
    }, rss
