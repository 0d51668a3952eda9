"""Assembly of the notify service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.notify import api, handlers
from services.notify.channels import Channel, EmailChannel, NotImplementedChannel
from services.notify.messages import Renderer
from services.notify.settings import Settings
from services.notify.store import NotifyStore
from shared.events import ReplyChannel
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The notify service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    store = NotifyStore(service.engine)
    pending = NotImplementedChannel()
    channels: dict[ReplyChannel, Channel] = {
        ReplyChannel.EMAIL: EmailChannel(settings),
        ReplyChannel.POSTFACH: pending,
        ReplyChannel.LETTER: pending,
    }
    notifier = handlers.Notifier(
        broker=service.broker, store=store, settings=settings, renderer=Renderer(), channels=channels,
        registry=service.registry,
    )
    handlers.register(service.broker, notifier, settings.consumer_group)
    app = service.create_app(
        title="OZG notify",
        description="Tells applicants what happened to their case, on the channel they chose.",
        routers=[api.create_router(service, store)],
    )
    return service, app
