"""Intake's settings, from ``INTAKE_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.intake.ratelimit import parse_limit
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Configuration of the intake service."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    service_name: str = "intake"
    port: int = 8001
    database_url: str = "sqlite:///./.run/intake.db"
    public_base_url: str = "http://127.0.0.1:8001"
    # How long a request waits for the broker's acknowledgement before answering 503. Longer than the producer's
    # own request timeout (OZG_KAFKA_REQUEST_TIMEOUT_MS), so that with a dead broker the producer gives the event
    # up first and a 503 means "nothing was accepted"; lower both to answer faster.
    publish_timeout_s: float = Field(default=12.0, gt=0)
    # What a 503 tells the client to wait before retrying.
    retry_after_s: int = Field(default=5, ge=1)
    # Outbox: a case still pending this long after its reservation is published again (with its event id).
    outbox_after_s: float = Field(default=60.0, gt=0)
    outbox_interval_s: float = Field(default=15.0, gt=0)
    # Status events (routed, unroutable, status-changed) are consumed in batches of up to this many records.
    batch_max_records: int = Field(default=500, ge=1)
    batch_timeout_ms: int = Field(default=20, ge=1)

    # Attachments (claim-check): the local blob store, size limits, and when unreferenced uploads are removed.
    blob_dir: Path = Path(".run/blobs")
    # Or an S3-compatible object store (``blob_store="s3"``): the bucket must exist. Without an access key, boto3's
    # own chain applies (AWS_* variables, shared config, instance or pod role). No endpoint: AWS itself.
    blob_store: Literal["local", "s3"] = "local"
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = ""
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_application_attachment_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    unreferenced_attachment_ttl_s: float = Field(default=24 * 3600, gt=0)
    attachment_sweep_interval_s: float = Field(default=600, gt=0)
    # SPEC §7: a case's attachments and the messages to the applicant in its history are deleted this long after
    # the case ended (closed, withdrawn, rejected), checked every retention_interval_s.
    retention_days: float = Field(default=30.0, ge=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)

    # Per-client rate limit on submit, status and attachments, in the ``limits`` notation ("600/minute",
    # "10/second", "1000 per hour"). Counted in this process's memory: each replica limits on its own.
    rate_limit: str = "600/minute"

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        parse_limit(value)
        return value

    @model_validator(mode="after")
    def _s3_configured(self) -> Self:
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("blob_store 's3' needs s3_bucket (INTAKE_S3_BUCKET)")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("set both s3_access_key_id and s3_secret_access_key, or neither")
        return self

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> Self:
        if self.publish_timeout_s * 1000 <= self.kafka.request_timeout_ms:
            raise ValueError("publish_timeout_s must exceed the Kafka request timeout (OZG_KAFKA_REQUEST_TIMEOUT_MS)")
        # A request still waiting for the broker must never race the outbox for its own case.
        if self.outbox_after_s <= 2 * self.publish_timeout_s:
            raise ValueError("outbox_after_s must exceed twice publish_timeout_s")
        return self
