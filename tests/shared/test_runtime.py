"""The parts every service shares (shared.runtime)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.runtime import Service
from shared.settings import KafkaSettings, ServiceSettings


async def test_the_broker_watch_follows_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", watch_interval_s=0.05, lost_after_pings=4)
    service = Service(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db'}", kafka=kafka), migrations=tmp_path)
    pings: list[float | None] = []
    reconnected = asyncio.Event()

    async def ping(timeout: float | None) -> bool:  # noqa: ASYNC109 - the name FastStream's ping has
        pings.append(timeout)
        return False

    async def stop(*_args: object) -> None:
        pass

    async def connect(*, cap_s: float = 10.0) -> None:
        # Publishing is held until the topics exist again; retries come at the watch's pace.
        assert service.broker.events.held
        assert cap_s == 0.05
        reconnected.set()

    monkeypatch.setattr(service.broker, "ping", ping)
    monkeypatch.setattr(service.broker, "stop", stop)
    monkeypatch.setattr(service, "connect", connect)
    watch = asyncio.create_task(service.watch_broker())
    try:
        await asyncio.wait_for(reconnected.wait(), 5)
    finally:
        watch.cancel()
    # Connected afresh after the fourth failed ping in a row, not before; each ping waits two intervals.
    assert pings == [0.1] * 4
