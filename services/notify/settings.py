"""Notify's settings, from ``NOTIFY_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Configuration of the notify service."""

    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore")

    service_name: str = "notify"
    port: int = 8003
    database_url: str = "sqlite:///./.run/notify.db"

    # E-mail over SMTP.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # STARTTLS upgrades a plain connection (port 587); smtp_tls is implicit TLS from the start (port 465).
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "OZG Servicekonto <noreply@ozg.example>"

    # The mailbox API in the style of the BundID-Postfach; without a URL, Postfach messages fail as not configured.
    postfach_url: str | None = None
    postfach_token: SecretStr | None = None
    postfach_timeout_s: float = Field(default=10.0, gt=0)

    # Letters for applicants without a digital channel: PDF files in this outbox directory, for printing.
    letter_dir: str = ".run/letters"
    # The sender line above the address window (DIN 5008 "Rücksendeangabe") and the letterhead.
    letter_sender: str = "OZG-Servicestelle · Musterstraße 1 · 10115 Berlin"

    # Delivery: a temporary failure is retried from the persisted schedule with exponential back-off
    # (retry_backoff_s, doubled per attempt, at most retry_backoff_max_s) until max_attempts attempts or
    # max_age_s after the notification was created; then it fails.
    max_attempts: int = Field(default=8, ge=1)
    max_age_s: float = Field(default=24 * 3600, ge=0)
    retry_backoff_s: float = Field(default=30.0, ge=0)
    retry_backoff_max_s: float = Field(default=3600.0, ge=0)
    # How often the background job looks for due retries, lapsed attempts and unpublished outcomes.
    scheduler_interval_s: float = Field(default=5.0, gt=0)
    # An event parked this long although its case's contact is known was missed (a race between replicas, a stop
    # before unparking): the scheduler handles it then.
    parked_grace_s: float = Field(default=60.0, gt=0)
    # How long one attempt may hold a notification; one still "sending" after this was interrupted (a crash).
    attempt_lease_s: float = Field(default=120.0, gt=0)

    # Messages per second per channel (a token bucket; bursts up to one second's worth); 0 means no limit.
    rate_email_per_s: float = Field(default=10.0, ge=0)
    rate_postfach_per_s: float = Field(default=10.0, ge=0)
    rate_letter_per_s: float = Field(default=50.0, ge=0)

    # Contact data is deleted this long after the case ended (SPEC §7); fractions allowed (tests use seconds).
    retention_days: float = Field(default=30.0, ge=0)
    retention_interval_s: float = Field(default=3600.0, gt=0)

    # The applicant's status link is ``{status_base_url}/{case_id}``.
    status_base_url: str = "http://127.0.0.1:8001/v1/applications"
