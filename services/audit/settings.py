"""Audit's settings, from ``AUDIT_*`` environment variables (Kafka from ``OZG_KAFKA_*``)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    """Configuration of the audit service."""

    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore")

    service_name: str = "audit"
    port: int = 8004
    database_url: str = "sqlite:///./.run/audit.db"
    # "production" refuses to start without AUDIT_SIGNING_KEY; "development" generates a key file instead.
    environment: Literal["development", "production"] = "development"
    # Ed25519 private key of the checkpoints: PEM (PKCS#8) or base64 of the raw 32 bytes.
    signing_key: SecretStr | None = None
    # Further Ed25519 public keys (PEM, one or more blocks) whose checkpoints verification accepts: the earlier
    # signing keys after a rotation, and the next one before it (README: rotating the signing key).
    trusted_public_keys: str | None = None
    # Retired keys by key id, each with the seq of the last checkpoint it signed (JSON, e.g. {"3f2a…": 41000}): a
    # checkpoint beyond it that names the key is refused, so a leaked key cannot sign a rewritten chain.
    retired_keys: dict[str, int] = Field(default_factory=dict)
    # Where development keeps its generated key; default: beside the SQLite database, else ./.run/.
    signing_key_file: Path | None = None
    # A checkpoint is signed once this many entries were appended since the last one ...
    checkpoint_every: int = Field(default=1000, ge=1)
    # ... or once this many seconds passed and the chain has grown.
    checkpoint_interval_s: float = Field(default=60.0, gt=0)
    # The service verifies the whole chain every this many seconds (first one interval after the start); 0: never.
    verify_interval_s: float = Field(default=3600.0, ge=0)
    # Events are appended in batches of up to this many records, one transaction each.
    batch_max_records: int = Field(default=500, ge=1)
    batch_timeout_ms: int = Field(default=20, ge=1)
