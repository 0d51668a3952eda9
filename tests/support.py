"""Helpers for tests: run a service in-process against the real broker, issue keys, read and write topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI

from shared import clients
from shared.events import ClientKind, ClientRecord
from shared.runtime import Service
from shared.settings import KafkaSettings

T = TypeVar("T")


@contextlib.asynccontextmanager
async def running(service: Service, app: FastAPI, timeout_s: float = 30) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan (migrations, topics, broker) and yield an HTTP client bound to it."""
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(service.broker_started.wait(), timeout_s)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def issue_key(
    settings: KafkaSettings, kind: ClientKind, *, service: Service | None = None, **kwargs: Any
) -> tuple[ClientRecord, str]:
    """Issue a client key; with ``service``, wait until that service knows it."""
    record, key = await clients.issue(settings, kind=kind, name=f"test {kind.value}", **kwargs)
    if service is not None:
        await wait_until(lambda: service.clients.authenticate(key) is not None)
    return record, key


async def wait_until(predicate: Callable[[], Any], timeout_s: float = 20, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


async def produce(
    settings: KafkaSettings, topic: str, value: bytes | None, headers: dict[str, str] | None = None,
    key: bytes | None = None,
) -> None:
    """Write one raw record (for poison-message tests and hand-made events)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value=value, key=key, headers=[(k, v.encode()) for k, v in (headers or {}).items()]
        )
    finally:
        await producer.stop()


async def consume(
    settings: KafkaSettings, topic: str, count: int, timeout_s: float = 20,
    predicate: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``count`` matching records arrived (fails on timeout)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False, metadata_max_age_ms=1000,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} records on {topic} within {timeout_s}s")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                found.extend(r for r in records if predicate is None or predicate(r))
        return found
    finally:
        await consumer.stop()


async def partition_counts(kafka: KafkaSettings, prefix: str = "ozg.") -> dict[str, int]:
    """How many partitions each topic starting with ``prefix`` has."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        await consumer.start()
        names = [name for name in await consumer.topics() if name.startswith(prefix)]
        return {name: len(consumer.partitions_for_topic(name) or ()) for name in sorted(names)}
    finally:
        await consumer.stop()


async def topic_names(kafka: KafkaSettings) -> set[str]:
    """The names of every topic on the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()
