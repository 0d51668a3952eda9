"""The service's own verification (SQLite and PostgreSQL): ``ozg_audit_chain_intact`` has no sample until a
verification ran, so the critical alert on ``== 0`` cannot fire at a start; the periodic job sets it to the verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, update

from services.audit.app import build, make_signer
from services.audit.models import ENTRIES
from services.audit.monitor import ChainMonitor
from services.audit.settings import Settings
from services.audit.store import Anchor, AuditStore
from tests.audit.chain import drop_guards, fill
from tests.support import wait_until

INTACT = "ozg_audit_chain_intact"
VERIFIED = "ozg_audit_last_verified_timestamp_seconds"


def samples(text: str) -> dict[str, float]:
    """The audit verdict's samples in a /metrics text, by name."""
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name in (INTACT, VERIFIED)}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, signing_key_file=tmp_path / "signing-key.pem", verify_interval_s=0.05)


@pytest.fixture
async def metrics(settings: Settings, engine: Engine) -> AsyncIterator[tuple[Callable[[], Awaitable[str]],
                                                                            Callable[[], Awaitable[None]]]]:
    """The service's /metrics, and its verification job as registered (the broker is not needed for either)."""
    service, app = build(settings)
    jobs = [job for job in service.background if job.__name__ == "audit_verification"]
    assert len(jobs) == 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:

        async def scrape() -> str:
            response = await client.get("/metrics")
            assert response.status_code == 200
            return response.text

        yield scrape, jobs[0]
    service.engine.dispose()


async def test_no_verdict_before_the_first_verification_then_the_jobs_verdict(
    metrics: tuple[Callable[[], Awaitable[str]], Callable[[], Awaitable[None]]], settings: Settings, engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    scrape, job = metrics
    store = AuditStore(engine, make_signer(settings), checkpoint_every=2)
    fill(store, 2)
    fill(store, 3)
    before = await scrape()
    # The metric is described, but has no sample: "ozg_audit_chain_intact == 0" cannot match.
    assert f"# TYPE {INTACT} gauge" in before
    assert samples(before) == {}

    caplog.set_level(logging.INFO, logger="services.audit.monitor")
    task = asyncio.create_task(job())
    try:
        verdict = await wait_until(lambda: _verdict(scrape))
        assert verdict[INTACT] == 1
        assert verdict[VERIFIED] > 0
        verified = [r for r in caplog.records if r.getMessage() == "audit chain verified intact"]
        assert verified
        assert (verified[0].trigger, verified[0].length, verified[0].checkpoints) == ("schedule", 5, 2)

        drop_guards(engine)
        with engine.begin() as connection:
            connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 3).values(status="rejected"))
        assert (await wait_until(lambda: _verdict(scrape, intact=0)))[INTACT] == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    broken = [r for r in caplog.records if r.getMessage() == "audit chain broken"]
    assert broken
    record = broken[0]
    assert record.levelno == logging.ERROR
    assert (record.kind, record.first_bad_seq, record.length, record.trigger) == ("changed", 3, 5, "schedule")


async def _verdict(scrape: Callable[[], Awaitable[str]], intact: int | None = None) -> dict[str, float] | None:
    found = samples(await scrape())
    if INTACT not in found or (intact is not None and found[INTACT] != intact):
        return None
    return found


def test_verification_interval_zero_turns_the_job_off(tmp_path: Path) -> None:
    assert Settings().verify_interval_s == 3600
    service, _ = build(Settings(database_url=f"sqlite:///{tmp_path / 'audit.db'}", verify_interval_s=0))
    try:
        assert "audit_verification" not in [job.__name__ for job in service.background]
    finally:
        service.engine.dispose()


def test_the_verification_started_last_decides(engine: Engine, tmp_path: Path) -> None:
    # An auditor's verification may overlap the scheduled one: the one that started later read the newer chain.
    registry = CollectorRegistry()
    times = iter([10.0, 11.0, 5.0, 12.0, 20.0, 21.0])
    store = AuditStore(engine)
    fill(store, 2)
    monitor = ChainMonitor(store, [], registry, clock=lambda: next(times))
    assert monitor.verify().intact  # started at 10, finished at 11
    assert samples(generate_latest(registry).decode()) == {INTACT: 1, VERIFIED: 11.0}
    # Started at 5 (before the verdict above), finished at 12 with an anchor it does not match: not exported.
    assert not monitor.verify([Anchor(9, "0" * 64)]).intact
    assert samples(generate_latest(registry).decode()) == {INTACT: 1, VERIFIED: 11.0}
    assert not monitor.verify([Anchor(9, "0" * 64)]).intact  # started at 20
    assert samples(generate_latest(registry).decode()) == {INTACT: 0, VERIFIED: 21.0}
