"""Routing's settings, from ``ROUTING_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from datetime import timedelta
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings

DATA = Path(__file__).parent / "data"
RULES = Path(__file__).parent / "rules"


class Settings(ServiceSettings):
    """Configuration of the routing service."""

    model_config = SettingsConfigDict(env_prefix="ROUTING_", extra="ignore")

    service_name: str = "routing"
    port: int = 8002
    database_url: str = "sqlite:///./.run/routing.db"
    # The municipality directory is the one imported into the database (import-directory, import-postcodes);
    # while the database holds none, this file serves instead (the bundled demo: the pilot Kommunen of SPEC §8).
    directory_file: Path = DATA / "demo_directory.json"
    # Competence rules: one YAML file per Land plus a default (see services/routing/rules).
    rules_dir: Path = RULES
    # How often every replica checks for a new directory import, changed destinations or edited rules files.
    poll_interval_s: float = Field(default=2.0, gt=0)
    # Submitted applications are consumed in batches of up to this many records. A batch's applications, parsed
    # and with their events built, are what routing holds at its peak: 250 kept it 6 MB further below the 150 MB
    # bar than 500 with the same rate (make bench, 10,000 cases queued).
    batch_max_records: int = Field(default=250, ge=1)
    batch_timeout_ms: int = Field(default=20, ge=1)
    # Register the demo destinations (one back office per pilot authority) at start-up.
    demo_destinations: bool = False
    demo_destinations_file: Path = DATA / "demo_destinations.json"
    # Webhook delivery: how often the schedule is checked, per-request timeout, back-off, and when to give up.
    webhook_poll_interval_s: float = Field(default=1.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_backoff_base_s: float = Field(default=5.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_max_age_s: float = Field(default=24 * 3600.0, gt=0)
    webhook_batch: int = Field(default=50, ge=1)
    # A failed delivery keeps its event (personal data) this long after it first failed, so an operator can redeliver
    # it once the receiver is fixed; then the retention job, every interval, deletes it (SPEC §7: 30 days).
    webhook_failed_keep_days: float = Field(default=30.0, ge=0)
    webhook_retention_interval_s: float = Field(default=3600.0, gt=0)
    # Tests and local demos only: allow plain http to a loopback address.
    webhook_allow_http_loopback: bool = False
    # Status changes: how long a report waits for the broker's acknowledgement before it answers 202 with
    # "published": false (the outbox publishes the event later).
    status_publish_timeout_s: float = Field(default=5.0, gt=0)
    # The outbox sweep: how often, from what age an unsent event is the sweep's (younger ones may still be in a
    # request's hands), and how long sent events are kept.
    outbox_interval_s: float = Field(default=5.0, gt=0)
    outbox_after_s: float = Field(default=10.0, ge=0)
    outbox_keep_sent_s: float = Field(default=24 * 3600.0, ge=0)

    @property
    def webhook_failed_keep(self) -> timedelta:
        """``webhook_failed_keep_days`` as a duration."""
        return timedelta(days=self.webhook_failed_keep_days)
