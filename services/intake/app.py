"""Assembly of the intake service."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from fastapi import FastAPI

from services.intake import api, handlers
from services.intake.attachments import sweep_job
from services.intake.blobs import BlobStore, LocalBlobStore, S3BlobStore
from services.intake.publishing import SubmissionPublisher, outbox_job
from services.intake.ratelimit import RateLimiter, RateLimitHeaders
from services.intake.retention import Retention
from services.intake.settings import Settings
from services.intake.store import IntakeStore
from services.intake.writer import SubmissionWriter
from shared.outbox import Backlog
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Intake:
    """Intake's own parts, on ``app.state.intake`` for operations and tests."""

    store: IntakeStore
    publisher: SubmissionPublisher
    blobs: BlobStore
    limiter: RateLimiter
    writer: SubmissionWriter


def blob_store(settings: Settings) -> BlobStore:
    """The configured blob store: a local directory, or an S3-compatible object store."""
    if settings.blob_store == "local":
        return LocalBlobStore(settings.blob_dir)
    assert settings.s3_bucket is not None  # checked by Settings
    secret = settings.s3_secret_access_key
    client = boto3.session.Session().client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        # Path-style requests: what S3-compatible stores (MinIO, Ceph, ...) understand without wildcard DNS.
        config=Config(s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
                      retries={"mode": "standard"}),
    )
    return S3BlobStore(client, settings.s3_bucket, settings.s3_prefix)


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The intake service and its ASGI app."""
    settings = settings or Settings()
    service = Service(settings, migrations=MIGRATIONS)
    store = IntakeStore(service.engine)
    publisher = SubmissionPublisher(service, settings.publish_timeout_s)
    blobs = blob_store(settings)
    limiter = RateLimiter(settings.rate_limit)
    writer = SubmissionWriter(store)
    handlers.register(service, store, settings)
    backlog = Backlog(service.registry, service.name)
    service.background.append(
        outbox_job(store, publisher, backlog, settings.outbox_after_s, settings.outbox_interval_s))
    service.background.append(sweep_job(store, blobs, settings.unreferenced_attachment_ttl_s,
                                        settings.attachment_sweep_interval_s))
    retention = Retention(store, blobs, service.broker, settings.retention_days, service.registry)
    service.background.append(retention.job(settings.retention_interval_s))
    app = service.create_app(
        title="OZG intake",
        description="Accepts applications (Anträge) from portals and citizens' offices and answers status queries.",
        routers=[api.create_router(service, store, settings, publisher, blobs, limiter, writer)],
    )
    # Puts the RateLimit-* header fields the routes computed on every answer, problems included.
    app.add_middleware(RateLimitHeaders)
    app.state.intake = Intake(store=store, publisher=publisher, blobs=blobs, limiter=limiter, writer=writer)
    return service, app
