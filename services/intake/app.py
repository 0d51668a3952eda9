"""Assembly of the intake service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from services.intake import api, handlers
from services.intake.attachments import sweep_job
from services.intake.blobs import BlobStore, LocalBlobStore
from services.intake.publishing import SubmissionPublisher, outbox_job
from services.intake.ratelimit import RateLimiter, RateLimitHeaders
from services.intake.settings import Settings
from services.intake.store import IntakeStore
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Intake:
    """Intake's own parts, on ``app.state.intake`` for operations and tests."""

    store: IntakeStore
    publisher: SubmissionPublisher
    blobs: BlobStore
    limiter: RateLimiter


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The intake service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    store = IntakeStore(service.engine)
    publisher = SubmissionPublisher(service, settings.publish_timeout_s)
    # The seam for an S3-compatible store: choose it here by configuration.
    blobs = LocalBlobStore(settings.blob_dir)
    limiter = RateLimiter(settings.rate_limit)
    handlers.register(service.broker, store, settings.consumer_group)
    service.background.append(outbox_job(store, publisher, settings.outbox_after_s, settings.outbox_interval_s))
    service.background.append(sweep_job(store, blobs, settings.unreferenced_attachment_ttl_s,
                                        settings.attachment_sweep_interval_s))
    app = service.create_app(
        title="OZG intake",
        description="Accepts applications (Anträge) from portals and citizens' offices and answers status queries.",
        routers=[api.create_router(service, store, settings, publisher, blobs, limiter)],
    )
    # Puts the RateLimit-* header fields the routes computed on every answer, problems included.
    app.add_middleware(RateLimitHeaders)
    api.add_problem_schema(app)
    app.state.intake = Intake(store=store, publisher=publisher, blobs=blobs, limiter=limiter)
    return service, app
