"""API clients through ozg.clients, and the idempotent-consumer record, on real infrastructure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from services.intake.app import build
from services.intake.settings import Settings
from shared import clients
from shared.auth import SCOPES
from shared.db import make_engine, migrate
from shared.events import ClientKind
from shared.idempotency import ProcessedEvent, claim_batch, first_delivery
from shared.settings import KafkaSettings
from tests.support import running, wait_until

ROOT = Path(__file__).resolve().parents[2]


def cli(kafka: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OZG_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    return subprocess.run([sys.executable, "-m", "shared.clients", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_cli_issue_list_revoke_reach_a_running_service(tmp_path: Path, kafka_settings: KafkaSettings) -> None:
    service, app = build(Settings(database_url=f"sqlite:///{tmp_path / 'i.db'}", kafka=kafka_settings))
    async with running(service, app) as client:
        issued = cli(kafka_settings, "issue", "--kind", "portal", "--name", "CLI portal")
        assert issued.returncode == 0, issued.stderr
        record = json.loads(issued.stdout)
        key = record["key"]
        assert key.startswith("ozg_")
        assert "key_hash" not in record

        async def status_for(key: str) -> int:
            response = await client.get(f"/v1/applications/{uuid.uuid4()}",
                                        headers={"Authorization": f"Bearer {key}"})
            return response.status_code

        await wait_until(lambda: service.clients.authenticate(key) is not None)
        assert await status_for(key) == 404  # authenticated; the case just doesn't exist

        listed = cli(kafka_settings, "list")
        assert record["client_id"] in listed.stdout
        assert key not in listed.stdout

        revoked = cli(kafka_settings, "revoke", record["client_id"])
        assert revoked.returncode == 0, revoked.stderr
        await wait_until(lambda: service.clients.authenticate(key) is None, timeout_s=10)
        assert await status_for(key) == 401

        assert cli(kafka_settings, "revoke", str(uuid.uuid4())).returncode == 1
        destination = cli(kafka_settings, "issue", "--kind", ClientKind.DESTINATION.value, "--name", "x")
        assert destination.returncode == 2  # a destination key must be bound to its destination


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "portal", "--destination-id", str(uuid.uuid4())],
         "only a destination client is bound to a destination_id, not a portal client"),
        (["--kind", "destination"], "a destination client must be bound to a destination_id"),
        (["--kind", "portal", "--scope", "applications:submit", "--scope", "foo:bar"],
         f"unknown scope(s) foo:bar; known: {', '.join(sorted(SCOPES))}"),
        (["--kind", "destination", "--destination-id", str(uuid.uuid4()), "--scope", "cases:write"],
         "unknown scope(s) cases:write;"),
    ],
    ids=["destination-id-on-a-portal", "destination-without-id", "unknown-scope", "unknown-scope-of-a-destination"],
)
async def test_cli_refuses_contradictory_clients_and_publishes_nothing(
    kafka_settings: KafkaSettings, args: list[str], message: str
) -> None:
    name = f"refused {uuid.uuid4()}"
    refused = cli(kafka_settings, "issue", "--name", name, *args)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert refused.stdout == ""  # no key printed
    assert name not in {record.name for record in (await clients.current(kafka_settings)).values()}


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    migrate(engine, ROOT / "services" / "intake" / "migrations", "intake")
    return engine


def test_first_delivery_takes_effect_once(engine: Engine) -> None:
    event_id = str(uuid.uuid4())
    with Session(engine) as session:
        assert first_delivery(session, "test", event_id)
        session.commit()
    with Session(engine) as session:
        assert not first_delivery(session, "test", event_id)
        assert first_delivery(session, "other-consumer", event_id)
        session.rollback()
    # A rolled-back effect leaves no record either: the redelivery will be processed.
    with Session(engine) as session:
        assert first_delivery(session, "other-consumer", event_id)


def test_claim_batch_claims_a_batch_as_first_delivery_claims_one(engine: Engine) -> None:
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    with Session(engine) as session:
        assert first_delivery(session, "batch", old)
        session.commit()
    with engine.begin() as connection:
        # Seen before, new, new again in the same batch: only the new one, once.
        assert claim_batch(connection, "batch", [old, new, new]) == {new}
        assert claim_batch(connection, "batch", [new]) == set()  # claimed in this transaction already
        assert claim_batch(connection, "batch", []) == set()
    with engine.connect() as connection:
        assert claim_batch(connection, "batch", [old, new]) == set()
        assert claim_batch(connection, "other-consumer", [old]) == {old}
        connection.rollback()
    with Session(engine) as session:
        assert first_delivery(session, "other-consumer", old)  # the rolled-back claim left no record
        session.rollback()


def test_concurrent_claims_cannot_both_commit(engine: Engine) -> None:
    event_id = str(uuid.uuid4())
    with Session(engine) as first, Session(engine) as second:
        assert first_delivery(first, "race", event_id)
        first.commit()
        second.add(ProcessedEvent(consumer="race", event_id=event_id))
        with pytest.raises(IntegrityError):
            second.commit()
