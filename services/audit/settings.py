"""Audit's settings, from ``AUDIT_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Configuration of the audit service."""

    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore")

    service_name: str = "audit"
    port: int = 8004
    database_url: str = "sqlite:///./.run/audit.db"
