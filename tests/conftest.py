"""Fixtures shared by the whole suite: a real Tansu broker, PostgreSQL, the handout data folder.

Under ``CI=true`` nothing is skipped: a missing PostgreSQL or ``../shared`` fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from deploy.local.broker import Tansu
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent
HANDOUT_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("OZG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
# Tansu holds a group join for half the session timeout (see KafkaSettings): 2 s instead of 5 s per start.
# Tansu answers a waiting fetch only near the end of its wait (see KafkaSettings): 25 ms instead of 500 ms per hop.
QUICK_GROUPS = {"heartbeat_interval_ms": 300, "session_timeout_ms": 3_000, "fetch_max_wait_ms": 25}


def skip_or_fail(reason: str) -> None:
    """Skip with a clear reason, or fail under CI where nothing may be skipped."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """One real Tansu broker for the session, on a free port."""
    broker = Tansu(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_settings(tansu: Tansu) -> KafkaSettings:
    """Kafka settings pointing at the session's Tansu, with fast dead-letter retries and quick group joins."""
    return KafkaSettings(bootstrap_servers=tansu.bootstrap, dlq_backoff_s=0.01, partitions=2, **QUICK_GROUPS)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The URL of the machine's PostgreSQL (skips, or fails under CI, when it is absent)."""
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        skip_or_fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"ozg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def handout_data() -> Path:
    """``../shared/data`` beside the repository (official directory and PLZ table)."""
    if not (HANDOUT_DATA / "GV100AD_30112025.txt").exists():
        skip_or_fail(f"handout data not found at {HANDOUT_DATA}")
    return HANDOUT_DATA
