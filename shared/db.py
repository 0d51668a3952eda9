"""Database plumbing every service shares: engines for SQLite and PostgreSQL, Alembic migrations, a ping."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, event, text
from sqlmodel import SQLModel, create_engine

MAX_BIGINT = 2**63 - 1
"""The largest integer a database takes as a parameter (SQLite's and PostgreSQL's 64-bit integers): a bound for
every integer from outside that reaches a statement, which would fail there with a server error otherwise."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so API threads and consumers can share it.

    Error messages leave out the statement's parameters: they hold personal data, and an error's text travels
    into logs and dead-letter headers.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)


def table_of(model: type[SQLModel]) -> Table:
    """The table of a SQLModel table class, for SQLAlchemy Core statements on the hot paths (the ORM's work per
    object cost the batch consumers more than their own)."""
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def alembic_config(engine: Engine, migrations: Path, service: str) -> Config:
    """An Alembic configuration for one service's migrations.

    Each service keeps its own version table (``alembic_version_<service>``), so its history names it. Services
    still need databases of their own: their tables share names (``processed_events``, ``outbox``).
    """
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.set_main_option("version_table", f"alembic_version_{service}")
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine, migrations: Path, service: str) -> None:
    """Bring the database to the newest migration (idempotent)."""
    command.upgrade(alembic_config(engine, migrations, service), "head")


def migration_lock_key(version_table: str) -> int:
    """The PostgreSQL advisory lock key of one service's migrations: stable across processes and releases."""
    return int.from_bytes(hashlib.sha256(f"ozg-migrate:{version_table}".encode()).digest()[:8], "big", signed=True)


def run_migrations_online(config: Config) -> None:
    """Body of every service's ``migrations/env.py``: run the migrations on the engine handed over."""
    from alembic import context

    engine: Engine = config.attributes["engine"]
    version_table = config.get_main_option("version_table") or "alembic_version"
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas start together and each migrates at start-up: the first takes the lock and migrates, the
            # others wait for its commit and then find the schema at head. Without it the second fails on the
            # tables (or types) the first is creating.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": migration_lock_key(version_table)})
        context.configure(
            connection=connection,
            version_table=version_table,
        )
        context.run_migrations()


def ping(engine: Engine) -> bool:
    """Whether the database answers."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
    return True
