"""Fixtures of the routing tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from services.routing.app import MIGRATIONS
from shared import db


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Routing's database, migrated: a SQLite file or a fresh PostgreSQL database (``database_url``)."""
    engine = db.make_engine(database_url)
    db.migrate(engine, MIGRATIONS, "routing")
    yield engine
    engine.dispose()
