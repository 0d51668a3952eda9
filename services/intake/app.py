"""Assembly of the intake service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.intake import api, handlers
from services.intake.settings import Settings
from services.intake.store import IntakeStore
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The intake service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    store = IntakeStore(service.engine)
    handlers.register(service.broker, store, settings.consumer_group)
    app = service.create_app(
        title="OZG intake",
        description="Accepts applications (Anträge) from portals and citizens' offices and answers status queries.",
        routers=[api.create_router(service, store, settings)],
    )
    return service, app
