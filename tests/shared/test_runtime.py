"""The parts every service shares (shared.runtime)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from sqlalchemy import create_engine, text

from shared.runtime import Service
from shared.settings import KafkaSettings, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


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


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_help_and_unknown_options_never_start_a_service(tmp_path: Path) -> None:
    # The database would be created (and migrated) by any command that got as far as building the service.
    database = tmp_path / "intake.db"
    env = {"INTAKE_DATABASE_URL": f"sqlite:///{database}"}
    listing = run_module("services.intake", "--help", env=env)
    assert listing.returncode == 0
    assert "serve" in listing.stdout
    assert "migrate" in listing.stdout
    for args in (["migrate", "--help"], ["serve", "-h"]):
        answer = run_module("services.intake", *args, env=env)
        assert answer.returncode == 0, answer.stderr
        assert f"python -m services.intake {args[0]}" in answer.stdout
    for args in (["--port", "9"], ["migrate", "--dry-run"], ["bogus"]):
        refused = run_module("services.intake", *args, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "error:" in refused.stderr
    assert not database.exists()
    # A service's own command still parses its own arguments.
    help_of_verify = run_module("services.audit", "verify", "--help")
    assert help_of_verify.returncode == 0
    assert "--public-key" in help_of_verify.stdout
    migrated = run_module("services.intake", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert database.exists()


def test_replicas_migrating_one_postgres_database_at_once_all_succeed(postgres_url: str) -> None:
    # Each replica migrates at start-up; on an empty database the second used to fail on what the first created.
    env = {"ROUTING_DATABASE_URL": postgres_url}
    replicas = [subprocess.Popen([sys.executable, "-m", "services.routing", "migrate"], cwd=ROOT, text=True,
                                 env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(3)]
    outcomes = [(replica.wait(timeout=120), replica.communicate()[1]) for replica in replicas]
    assert [code for code, _ in outcomes] == [0, 0, 0], [err[-2000:] for _, err in outcomes]
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version_routing")).all()
    finally:
        engine.dispose()
    assert len(versions) == 1


def test_audit_migrates_without_its_signing_key(tmp_path: Path) -> None:
    # A migration job gets the database, not the private key that signs checkpoints; serving still needs it.
    env = {"AUDIT_DATABASE_URL": f"sqlite:///{tmp_path / 'audit.db'}", "AUDIT_ENVIRONMENT": "production",
           "AUDIT_SIGNING_KEY": "", "AUDIT_SIGNING_KEY_FILE": ""}
    migrated = run_module("services.audit", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    assert (tmp_path / "audit.db").exists()
    served = run_module("services.audit", "serve", env=env)
    assert served.returncode != 0
    assert "AUDIT_SIGNING_KEY" in served.stderr


def test_a_service_reports_itself_down_until_it_reached_its_broker(tmp_path: Path) -> None:
    # The OzgBrokerUnreachable alert needs a 0 to fire on: a service that never connects must not show no data.
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    service = Service(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'db'}", kafka=kafka,
                                      service_name="probe"), migrations=tmp_path)
    assert 'ozg_service_up{service="probe"} 0.0' in generate_latest(service.registry).decode()
