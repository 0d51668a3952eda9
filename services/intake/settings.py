"""Intake's settings, from ``INTAKE_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Configuration of the intake service."""

    model_config = SettingsConfigDict(env_prefix="INTAKE_", extra="ignore")

    service_name: str = "intake"
    port: int = 8001
    database_url: str = "sqlite:///./.run/intake.db"
    public_base_url: str = "http://127.0.0.1:8001"
    # How long a request waits for the broker's acknowledgement before answering 503.
    publish_timeout_s: float = Field(default=5.0, gt=0)
