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

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # STARTTLS upgrades a plain connection (port 587); smtp_tls is implicit TLS from the start (port 465).
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    # A transient SMTP failure (relay down, 4xx) is tried this many times in all before the notification fails.
    smtp_attempts: int = Field(default=3, ge=1)
    smtp_backoff_s: float = Field(default=1.0, ge=0)

    mail_from: str = "OZG Servicekonto <noreply@ozg.example>"
    # The applicant's status link is ``{status_base_url}/{case_id}``.
    status_base_url: str = "http://127.0.0.1:8001/v1/applications"
