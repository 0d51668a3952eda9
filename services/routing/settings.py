"""Routing's settings, from ``ROUTING_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

DATA = Path(__file__).parent / "data"


class Settings(ServiceSettings):
    """Configuration of the routing service."""

    model_config = SettingsConfigDict(env_prefix="ROUTING_", extra="ignore")

    service_name: str = "routing"
    port: int = 8002
    database_url: str = "sqlite:///./.run/routing.db"
    # The municipality directory held in memory; the bundled demo holds the pilot Kommunen of SPEC §8.
    directory_file: Path = DATA / "demo_directory.json"
    # Register the demo destinations (one back office per pilot authority) at start-up.
    demo_destinations: bool = False
    demo_destinations_file: Path = DATA / "demo_destinations.json"
