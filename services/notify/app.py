"""Assembly of the notify service."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.notify import api, handlers
from services.notify.channels import Channel, EmailChannel, LetterChannel, PostfachChannel
from services.notify.delivery import Deliverer
from services.notify.messages import Renderer
from services.notify.settings import Settings
from services.notify.store import NotifyStore
from shared import topics
from shared.events import ReplyChannel
from shared.jobs import periodic
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The notify service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    if all(spec.name != topics.DELETIONS for spec in service.topic_specs):
        service.topic_specs.append(topics.TopicSpec(topics.DELETIONS))
    store = NotifyStore(service.engine)
    postfach = PostfachChannel(settings)
    email = EmailChannel(settings)
    channels: dict[ReplyChannel, Channel] = {
        ReplyChannel.EMAIL: email,
        ReplyChannel.POSTFACH: postfach,
        ReplyChannel.LETTER: LetterChannel(settings),
    }
    deliverer = Deliverer(
        broker=service.broker, store=store, settings=settings, channels=channels, registry=service.registry
    )
    notifier = handlers.Notifier(store=store, settings=settings, renderer=Renderer(), deliverer=deliverer)
    handlers.register(service.broker, notifier, settings)

    scheduler = periodic("notification scheduler round", settings.scheduler_interval_s, deliverer.sweep)

    async def notification_scheduler() -> None:
        try:
            await scheduler()
        finally:
            await email.aclose()
            await postfach.aclose()

    service.background += [notification_scheduler,
                           periodic("parked events round", settings.scheduler_interval_s, notifier.handle_stranded),
                           periodic("retention round", settings.retention_interval_s, deliverer.purge)]
    app = service.create_app(
        title="OZG notify",
        description="Tells applicants what happened to their case, on the channel they chose.",
        routers=[api.create_router(service, store)],
    )
    return service, app
