"""Ed25519 keys of the signed checkpoints: loading the configured key, the development key file, signatures.

A checkpoint signs the canonical JSON of (sequence, head hash, time); anyone holding the public key (served at
``GET /v1/checkpoints/public-key``) can check it without trusting audit's database.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

# Domain separation: a checkpoint signature can never be mistaken for a signature over anything else.
CHECKPOINT_TYPE = "de.ozg.audit.checkpoint.v1"


class SigningKeyError(ValueError):
    """The configured checkpoint key is missing or unusable. Its message never holds key material."""


def canonical_time(moment: datetime) -> str:
    """A time as signatures and hashes cover it: ISO-8601 UTC with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def checkpoint_message(seq: int, head_hash: str, created_at: datetime | str) -> bytes:
    """The exact bytes a checkpoint's signature covers.

    ``json.dumps({"head_hash": …, "seq": …, "time": …, "type": "de.ozg.audit.checkpoint.v1"}, sort_keys=True,
    separators=(",", ":"))`` encoded as UTF-8 (pure ASCII), the time as in the entries' hashes.
    """
    time = created_at if isinstance(created_at, str) else canonical_time(created_at)
    return (
        f'{{"head_hash":{_json(head_hash)},"seq":{seq:d},"time":{_json(time)},"type":{_json(CHECKPOINT_TYPE)}}}'
    ).encode()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS#8) or from base64 of the raw 32-byte key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError("the checkpoint signing key is not a readable unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError("the checkpoint signing key must be an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise SigningKeyError("the checkpoint signing key is neither PEM nor base64") from None
    if len(raw) != 32:
        raise SigningKeyError("a base64 checkpoint signing key must decode to exactly 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo), as ``GET /v1/checkpoints/public-key`` serves it."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError("not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("the checkpoint public key must be an Ed25519 key")
    return key


_PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(pem: bytes) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM text of one or more SubjectPublicKeyInfo blocks (files concatenated)."""
    blocks = _PEM_PUBLIC_KEY.findall(pem)
    if not blocks:
        raise SigningKeyError("no PEM public key (-----BEGIN PUBLIC KEY-----) found")
    return [load_public_key(block) for block in blocks]


def public_pem(key: Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo)."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: SHA-256 (hex) of its raw 32 bytes, first 16 hex digits."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signature_valid(key: Ed25519PublicKey, message: bytes, signature_hex: str) -> bool:
    """Whether ``signature_hex`` (hex of 64 bytes) is ``key``'s signature over ``message``."""
    try:
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """The public keys whose checkpoint signatures verification accepts, by ``key_id()``.

    A checkpoint names the key that signed it. After a rotation of the signing key the earlier checkpoints name the
    earlier key, which stays trusted for as long as they exist: for ever, as the chain is append-only.
    """
    return {key_id(key): key for key in keys}


class CheckpointSigner:
    """Signs checkpoints with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self.public_pem = public_pem(self.public_key)

    def sign(self, seq: int, head_hash: str, created_at: datetime) -> str:
        """Hex of the Ed25519 signature over checkpoint_message()."""
        return self._private_key.sign(checkpoint_message(seq, head_hash, created_at)).hex()

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id!r})"


def development_key_file(database_url: str) -> Path:
    """Where a development key is kept: next to a SQLite database, else under ``./.run/``."""
    if database_url.startswith("sqlite"):
        database = database_url.split("///", 1)[-1]
        if database and database != ":memory:":
            path = Path(database)
            return path.with_name(f"{path.stem}-signing-key.pem")
    return Path(".run") / "audit-signing-key.pem"


def _write_new_key(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: when two processes start at once, one key wins and both use it.
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        log.warning("no AUDIT_SIGNING_KEY configured: generated a development checkpoint key; production must "
                    "configure one", extra={"key_file": str(path), "key_id": key_id(key.public_key())})


def resolve_private_key(
    configured: str | None, *, key_file: Path, production: bool, generate: bool = True
) -> Ed25519PrivateKey | None:
    """The checkpoint key: the configured one; in development else the key file, created when missing.

    Production without a configured key is an error. With ``generate=False`` (verify), a missing key file gives
    None instead of a new key, which could only make every existing signature look invalid.
    """
    if configured:
        return load_private_key(configured)
    if production:
        raise SigningKeyError("AUDIT_SIGNING_KEY must be configured in production")
    if not key_file.exists():
        if not generate:
            return None
        _write_new_key(key_file)
    key = load_private_key(key_file.read_text())
    log.info("using the development checkpoint key", extra={"key_file": str(key_file),
                                                            "key_id": key_id(key.public_key())})
    return key
