"""Assembly of the routing service."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI
from prometheus_client import Gauge

from services.routing import api, handlers, status, webhooks
from services.routing.directory import Directory
from services.routing.publishing import OutboxPublisher
from services.routing.registry import RoutingState
from services.routing.settings import Settings
from services.routing.store import RoutingStore
from shared.jobs import periodic
from shared.runtime import Service

log = logging.getLogger(__name__)

# The alert on waiting cases holds for 15 minutes: a count every 15 s is fresh enough and costs nothing.
CLEARING_COUNT_INTERVAL_S = 15.0
MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The routing service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    # The directory is loaded at start-up: the imported one, or the fallback file while none is imported.
    state = RoutingState(RoutingStore(service.engine), Directory(gebietsstand=""),
                         fallback_directory=settings.directory_file, rules_dir=settings.rules_dir)
    publisher = OutboxPublisher(service, state, settings)
    handlers.register(service, state, publisher, settings)
    status.register(service, publisher, settings)

    async def load() -> None:
        if settings.demo_destinations:
            await anyio.to_thread.run_sync(state.seed_demo_destinations, settings.demo_destinations_file)
        await anyio.to_thread.run_sync(state.refresh)

    sender = webhooks.WebhookSender(service.engine, settings, webhooks.deliveries_counter(service.registry))

    async def deliver_webhooks() -> None:
        await sender.run()

    service.on_start.append(load)
    # Other replicas' registrations and imports, picked up within an interval (load() read them at start).
    service.background.append(periodic("directory refresh", settings.poll_interval_s,
                                       lambda: anyio.to_thread.run_sync(state.refresh), wait_first=True))
    async def destination_topics() -> None:
        try:
            await state.ensure_all_topics(settings.kafka)
        except Exception as exc:  # noqa: BLE001 - each dispatch still creates its destination's topics first
            log.warning("destination topics not created at start", extra={"error": type(exc).__name__})

    service.background.append(destination_topics)
    service.background.append(deliver_webhooks)
    service.background.append(periodic("outbox sweep", settings.outbox_interval_s, publisher.sweep))
    retention = webhooks.WebhookRetention(service.engine, service.broker, settings)
    service.background.append(periodic("webhook retention", settings.webhook_retention_interval_s, retention.purge))
    clearing = Gauge("ozg_clearing_cases", "Cases waiting in clearing now (every replica reports the same count)",
                     registry=service.registry)

    async def count_clearing() -> None:
        clearing.set(await anyio.to_thread.run_sync(state.store.clearing_count))

    service.background.append(periodic("clearing count", CLEARING_COUNT_INTERVAL_S, count_clearing))
    app = service.create_app(
        title="OZG routing",
        description="Finds the competent authority for a service and a place and dispatches cases to it.",
        routers=[api.create_router(state), api.create_operator_router(service, state, publisher),
                 api.create_destination_router(service, state, publisher)],
    )
    return service, app
