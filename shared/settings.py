"""Settings base: one pydantic-settings class per service, plus the Kafka settings all services share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from faststream.security import BaseSecurity


class KafkaSettings(BaseSettings):
    """How to reach the broker; read from ``OZG_KAFKA_*`` so one set of variables serves every service."""

    model_config = SettingsConfigDict(env_prefix="OZG_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    # Tansu rejects the idempotent producer; Apache Kafka (docker-compose, Kubernetes) should turn it on.
    idempotence: bool = False
    partitions: int = Field(default=3, ge=1)
    # A destination's topic (and its dead-letter twin) carries one back office's cases: a low rate that needs no
    # parallel consumers. With one topic per Kommune a federal deployment has thousands; every partition costs the
    # brokers, and every fetch of audit's pattern subscription reads every partition (on Tansu: 78 partitions for
    # the 19 demo destinations at 3, 40 at 1, and a fifth less broker CPU while idle). Raise it for a destination
    # whose back office needs several consumers.
    destination_partitions: int = Field(default=1, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # How long the brokers keep the records of every topic the services create, but the compacted ozg.clients
    # (retention.ms). SPEC §7 bounds personal data, and the topics hold it: submitted applications, each back office's
    # dispatched cases, their dead letters. Without it the cluster's default holds, which may be "for ever". A back
    # office that reads its topic must read within it, and a replay reaches back no further. 0: the broker's default.
    retention_days: float = Field(default=30, ge=0, le=36_500)
    graceful_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_ms: int = Field(default=10_000, ge=1000)
    # How often consumers refresh metadata; short so pattern subscriptions see new topics quickly.
    metadata_max_age_ms: int = Field(default=5_000, ge=500)
    # Consumer-group liveness, Kafka's defaults. Tansu holds every group join for half the session timeout
    # (measured: 5 s at 10 s, 2 s at 3 s), so the local stack and the tests run with a short one.
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    # How long the broker may hold a fetch that finds nothing new, Kafka's default. Apache Kafka answers a waiting
    # fetch as soon as a record arrives; Tansu answers only near the end of the wait (measured: a record took
    # 135 ms at p50 from produce to consumer at 500 ms, 15 ms at 100 ms, 4 ms at 10 ms), once per hop of a case.
    # The local stack and the tests run with a short one.
    fetch_max_wait_ms: int = Field(default=500, ge=1)
    # Each service pings the broker every watch_interval_s and connects afresh after lost_after_pings failed pings in
    # a row: long enough to ride out a slow answer, short enough to notice before a restarted broker is back.
    watch_interval_s: float = Field(default=1.0, gt=0)
    lost_after_pings: int = Field(default=3, ge=1)
    # How often each service measures its consumer group's lag for /metrics.
    lag_interval_s: float = Field(default=15.0, gt=0)
    # The largest record value a consumer accepts; a longer one is dead-lettered unread. Kafka's own default
    # (message.max.bytes) is about 1 MiB; producers stay below it (intake refuses larger applications).
    max_event_bytes: int = Field(default=1024 * 1024, ge=1024)
    dlq_retries: int = Field(default=3, ge=0)
    dlq_backoff_s: float = Field(default=0.2, ge=0)
    # A cluster shared with back offices must know who connects: TLS (optionally with a client certificate) and/or
    # SASL, so that its ACLs can let only the services write their topics and each back office read its own.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # The CA that signed the brokers' certificates (default: the system's), and a client certificate and key for
    # mutual TLS.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @model_validator(mode="after")
    def _credentials_complete(self) -> Self:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs OZG_KAFKA_SASL_USERNAME and "
                             "OZG_KAFKA_SASL_PASSWORD")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("OZG_KAFKA_SSL_KEYFILE needs OZG_KAFKA_SSL_CERTFILE")
        return self

    @property
    def max_published_bytes(self) -> int:
        """The most event data a service accepts from a client to publish: half of ``max_event_bytes``, above which
        every consumer dead-letters a record unread. The other half leaves room for what the events it causes add
        (the dispatched event carries routing's decision too), the headers and the record batch."""
        return self.max_event_bytes // 2

    @property
    def retention_ms(self) -> int | None:
        """``retention_days`` as Kafka's ``retention.ms`` (None: leave it to the broker)."""
        return round(self.retention_days * 86_400_000) if self.retention_days else None

    def security(self) -> BaseSecurity | None:
        """FastStream's description of how to connect (None: plaintext, no authentication)."""
        from aiokafka.helpers import create_ssl_context
        from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

        if self.security_protocol == "PLAINTEXT":
            return None
        tls = self.security_protocol.endswith("SSL")
        context = create_ssl_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
            certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
            keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
        ) if tls else None
        if self.security_protocol == "SSL":
            return BaseSecurity(ssl_context=context, use_ssl=True)
        assert self.sasl_username is not None
        assert self.sasl_password is not None
        sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
        return sasl[self.sasl_mechanism](self.sasl_username, self.sasl_password.get_secret_value(),
                                         ssl_context=context, use_ssl=tls)

    def client_options(self) -> dict[str, Any]:
        """The same as keyword arguments of aiokafka's clients (producer, consumer, admin), as FastStream maps it."""
        from faststream.kafka.security import parse_security

        return parse_security(self.security())


class ServiceSettings(BaseSettings):
    """Base of each service's ``Settings``; subclasses set ``env_prefix`` (``INTAKE_``, ``ROUTING_``, ...)."""

    model_config = SettingsConfigDict(extra="ignore")

    service_name: str = "ozg"
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///./ozg.db"
    log_level: str = "INFO"
    log_json: bool = True
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @property
    def consumer_group(self) -> str:
        """The Kafka consumer group of this service: every replica shares it."""
        return f"ozg-{self.service_name}"
