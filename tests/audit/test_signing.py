"""The checkpoint key: PEM or base64 from configuration, a generated development key, none in production."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from services.audit.app import make_signer
from services.audit.settings import Settings
from services.audit.signing import (
    SigningKeyError,
    development_key_file,
    load_private_key,
    resolve_private_key,
)


def raw_and_pem(key: Ed25519PrivateKey) -> tuple[str, str]:
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return base64.b64encode(raw).decode(), pem.decode()


def test_configured_key_as_pem_or_base64() -> None:
    key = Ed25519PrivateKey.generate()
    expected = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for text in raw_and_pem(key):
        loaded = load_private_key(text)
        assert loaded.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw) == expected
    for bad in ("not a key", base64.b64encode(b"short").decode(), "-----BEGIN PRIVATE KEY-----\nxx\n"):
        with pytest.raises(SigningKeyError) as caught:
            load_private_key(bad)
        assert bad not in str(caught.value)


def test_development_generates_and_keeps_a_key_beside_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    key_file = development_key_file(url)
    assert key_file == tmp_path / "audit-signing-key.pem"
    with caplog.at_level(logging.INFO, logger="services.audit.signing"):
        first = make_signer(Settings(database_url=url))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "generated a development checkpoint key" in caplog.text
    assert key_file.read_text().split("\n")[1] not in caplog.text  # the key itself is never logged
    # A restart signs with the same key; verify does not invent one where there is none.
    assert make_signer(Settings(database_url=url)).key_id == first.key_id
    assert resolve_private_key(None, key_file=tmp_path / "none.pem", production=False, generate=False) is None


def test_production_requires_a_configured_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with pytest.raises(SigningKeyError, match="AUDIT_SIGNING_KEY"):
        make_signer(Settings(database_url=url, environment="production"))
    assert not development_key_file(url).exists()
    raw, _ = raw_and_pem(Ed25519PrivateKey.generate())
    signer = make_signer(Settings(database_url=url, environment="production", signing_key=SecretStr(raw)))
    assert raw not in repr(signer)
    assert not development_key_file(url).exists()
