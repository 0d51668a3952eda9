"""Assembly of the audit service, and its ``verify`` command."""

from __future__ import annotations

import sys
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from services.audit import api, handlers
from services.audit.settings import Settings
from services.audit.store import AuditStore
from shared import db
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The audit service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    store = AuditStore(service.engine)
    handlers.register(service.broker, store, settings.consumer_group, service.registry)
    app = service.create_app(
        title="OZG audit",
        description="Keeps an append-only, tamper-evident hash chain of every event; serves case trails and "
        "verifies the chain. Holds digests of event data, never the data.",
        routers=[api.create_router(service, store)],
    )
    return service, app


def verify_command(_args: list[str], settings: Settings | None = None) -> int:
    """``python -m services.audit verify``: print the report as JSON; exit 0 if intact, 1 if not, 2 on error."""
    settings = settings or Settings()
    # Only the database: verifying needs neither the broker nor the HTTP app, and changes nothing.
    engine = db.make_engine(settings.database_url)
    try:
        report = AuditStore(engine).verify()
    except SQLAlchemyError as exc:
        print(f"cannot read the audit chain: {type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(report.model_dump_json())
    return 0 if report.intact else 1
