"""Assembly of the routing service."""

from __future__ import annotations

from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI

from services.routing import api, handlers
from services.routing.directory import Directory
from services.routing.registry import RoutingState
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The routing service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    state = RoutingState(RoutingStore(service.engine), Directory.from_json(settings.directory_file))
    handlers.register(service.broker, state, settings.kafka, settings.consumer_group, service.registry)

    async def load_destinations() -> None:
        if settings.demo_destinations:
            await anyio.to_thread.run_sync(state.seed_demo_destinations, settings.demo_destinations_file)
        else:
            await anyio.to_thread.run_sync(state.reload_destinations)

    service.on_start.append(load_destinations)
    app = service.create_app(
        title="OZG routing",
        description="Finds the competent authority for a service and a place and dispatches cases to it.",
        routers=[api.create_router(state)],
    )
    return service, app
