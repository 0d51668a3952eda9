"""Connecting to a secured cluster: the ``OZG_KAFKA_SECURITY_*``/``SASL_*``/``SSL_*`` settings reach every client."""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from shared import clients, topics
from shared.auth import ClientDirectory
from shared.kafka import EventProducer, make_broker
from shared.lag import ConsumerLag
from shared.settings import KafkaSettings


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and its key, as a client certificate or a CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ozg-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert KafkaSettings().security() is None
    assert KafkaSettings().client_options() == {}


def test_the_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca, _ = self_signed(tmp_path)
    for name, value in {"SECURITY_PROTOCOL": "SASL_SSL", "SASL_MECHANISM": "SCRAM-SHA-256",
                        "SASL_USERNAME": "ozg-routing", "SASL_PASSWORD": "s3cret", "SSL_CAFILE": str(ca)}.items():
        monkeypatch.setenv(f"OZG_KAFKA_{name}", value)
    settings = KafkaSettings()
    options = settings.client_options()
    assert {k: options[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                                    "sasl_plain_password")} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "ozg-routing",
        "sasl_plain_password": "s3cret"}
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert [dict(entry[0] for entry in c["subject"])["commonName"] for c in context.get_ca_certs()] == ["ozg-test-ca"]
    assert "s3cret" not in repr(settings)  # a secret, never printed with the settings


def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    options = KafkaSettings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=key).client_options()
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    with pytest.raises(ssl.SSLError):  # the key must belong to the certificate: it is loaded, not just named
        KafkaSettings(security_protocol="SSL", ssl_certfile=cert, ssl_keyfile=self_signed(tmp_path / "..")[1]
                      ).client_options()


@pytest.mark.parametrize(
    "settings",
    [{"security_protocol": "SASL_SSL"}, {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
     {"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, {"security_protocol": "TLS"},
     {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"}],
)
def test_incomplete_or_unknown_security_settings_are_refused_at_start(settings: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings(**settings)  # type: ignore[arg-type]


async def start_broker(settings: KafkaSettings) -> None:
    broker, _ = make_broker(settings, service="security-test", registry=CollectorRegistry())
    try:
        await broker.start()
    finally:
        await broker.stop()


async def start_producer(settings: KafkaSettings) -> None:
    producer = EventProducer(settings, client_id="security-test", registry=CollectorRegistry())
    try:
        await producer.start()
    finally:
        await producer.stop()


async def measure_lag(settings: KafkaSettings) -> None:
    lag = ConsumerLag(settings, lambda: ["ozg-security-test"], CollectorRegistry())
    await lag._measure("ozg-security-test")  # measure() logs failures instead of raising


async def read_keys(settings: KafkaSettings) -> None:
    await ClientDirectory().catch_up(settings, timeout_s=5)


CLIENTS: dict[str, Callable[[KafkaSettings], Awaitable[object]]] = {
    "topics (admin)": lambda s: topics.ensure_topics(s, topics.standard_topics()),
    "broker (FastStream)": start_broker,
    "event producer": start_producer,
    "consumer lag": measure_lag,
    "key directory": read_keys,
    "clients CLI": clients.current,
}


@pytest.mark.parametrize("client", CLIENTS, ids=list(CLIENTS))
async def test_every_client_authenticates_with_the_configured_mechanism(
    kafka_settings: KafkaSettings, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Tansu speaks no SCRAM: its answer shows that the client asked for it, i.e. that the settings reached it.
    secured = KafkaSettings(**{
        **kafka_settings.model_dump(), "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "ozg", "sasl_password": "secret", "request_timeout_ms": 2000})
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        await CLIENTS[client](secured)
    # aiokafka names the broker's answer to the handshake in its log, the exception only "unable to bootstrap".
    assert any("UnsupportedSaslMechanism" in record.getMessage() for record in caplog.records)
