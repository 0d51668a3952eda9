"""Assembly of the audit service, and its ``verify`` command."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from functools import partial
from pathlib import Path

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from services.audit import api, handlers
from services.audit.monitor import ChainMonitor
from services.audit.settings import Settings
from services.audit.signing import (
    CheckpointSigner,
    SigningKeyError,
    development_key_file,
    load_public_keys,
    resolve_private_key,
)
from services.audit.store import HEAD_HASH, Anchor, AuditStore
from shared import db
from shared.jobs import periodic
from shared.runtime import Service

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


def configured_private_key(settings: Settings, *, generate: bool = True) -> Ed25519PrivateKey | None:
    """The checkpoint key of ``settings``: the configured one, or in development the key file (created when missing
    unless ``generate`` is false; then None)."""
    return resolve_private_key(
        settings.signing_key.get_secret_value() if settings.signing_key else None,
        key_file=settings.signing_key_file or development_key_file(settings.database_url),
        production=settings.environment == "production",
        generate=generate,
    )


def make_signer(settings: Settings) -> CheckpointSigner:
    """The checkpoint signer of ``settings``: the configured key, or in development the generated key file."""
    key = configured_private_key(settings)
    assert key is not None
    return CheckpointSigner(key)


def configured_trusted_keys(settings: Settings) -> list[Ed25519PublicKey]:
    """The public keys of ``AUDIT_TRUSTED_PUBLIC_KEYS`` (none when unset); unreadable ones are an error."""
    if not settings.trusted_public_keys:
        return []
    try:
        return load_public_keys(settings.trusted_public_keys.encode())
    except SigningKeyError as exc:
        raise SigningKeyError(f"AUDIT_TRUSTED_PUBLIC_KEYS: {exc}") from None


def build(settings: Settings | None = None) -> tuple[Service, FastAPI]:
    """The audit service and its ASGI app."""
    settings = settings or Settings()
    signer = make_signer(settings)
    keys = [signer.public_key, *configured_trusted_keys(settings)]
    service = Service(settings, migrations=MIGRATIONS)
    store = AuditStore(service.engine, signer, checkpoint_every=settings.checkpoint_every,
                       checkpoint_interval_s=settings.checkpoint_interval_s)
    handlers.register(service.broker, store, service.dead_letters, settings, service.registry)

    # A checkpoint every checkpoint_interval_s while the chain grows, however slowly.
    service.background.append(periodic("audit checkpoint", min(settings.checkpoint_interval_s / 4, 5.0),
                                       lambda: anyio.to_thread.run_sync(store.checkpoint_if_due), wait_first=True))
    monitor = ChainMonitor(store, keys, service.registry, retired=settings.retired_keys)
    if settings.verify_interval_s > 0:
        # The whole chain every verify_interval_s, the first time one interval after the start: a restart changes
        # nothing in the chain, and a replica KEDA starts because of lag should catch up before walking the chain.
        service.background.append(periodic(
            "audit verification", settings.verify_interval_s,
            lambda: anyio.to_thread.run_sync(partial(monitor.verify, trigger="schedule")), wait_first=True))
    app = service.create_app(
        title="OZG audit",
        description="Keeps an append-only, tamper-evident hash chain of every event, with Ed25519-signed "
        "checkpoints; serves case trails, checkpoints and their public key, and verifies the chain. Holds digests "
        "of event data, never the data.",
        routers=[api.create_router(service, store, signer, keys, monitor)],
    )
    return service, app


def _public_keys(settings: Settings, public_key_files: list[Path]) -> list[Ed25519PublicKey]:
    if public_key_files:
        return [key for path in public_key_files for key in load_public_keys(path.read_bytes())]
    key = configured_private_key(settings, generate=False)
    return [*([key.public_key()] if key is not None else []), *configured_trusted_keys(settings)]


_ANCHOR = re.compile(rf"([0-9]{{1,19}}):({HEAD_HASH})")


def _anchor(text: str) -> Anchor:
    """An ``--expect`` value: ``SEQ:HEAD_HASH`` of a checkpoint the auditor kept."""
    match = _ANCHOR.fullmatch(text)
    if match is None or not 1 <= int(match[1]) <= db.MAX_BIGINT:
        raise argparse.ArgumentTypeError(
            f"expected SEQ:HEAD_HASH (seq 1 to {db.MAX_BIGINT}, head hash 64 lower-case hex digits), got {text!r}")
    return Anchor(int(match[1]), match[2])


def _retired(text: str) -> tuple[str, int]:
    """A ``--retired`` value: ``KEY_ID:SEQ``."""
    match = re.fullmatch(r"([0-9a-f]{16}):([0-9]{1,19})", text)
    if match is None or int(match[2]) > db.MAX_BIGINT:
        raise argparse.ArgumentTypeError(f"expected KEY_ID:SEQ (16 lower-case hex digits, a seq), got {text!r}")
    return match[1], int(match[2])


def verify_command(args: list[str], settings: Settings | None = None) -> int:
    """``python -m services.audit verify [--public-key FILE] [--expect SEQ:HEAD_HASH ...]``: print the report as
    JSON; exit 0 if intact, 1 if not, 2 on error.

    Each checkpoint's signature is checked against the key it names among the PEM public keys in the FILEs (as
    ``GET /v1/checkpoints/public-keys`` serves them; a file may hold several), else among the public half of the
    configured signing key and ``AUDIT_TRUSTED_PUBLIC_KEYS``. Each ``--expect`` is a checkpoint
    the auditor fetched earlier and kept outside audit's database: the chain must reach its seq with its head hash.
    """
    parser = argparse.ArgumentParser(prog="python -m services.audit verify")
    parser.add_argument("--public-key", type=Path, action="append", default=[], metavar="FILE",
                        help="PEM file of checkpoint public keys, one or more; repeatable; every checkpoint must "
                        "name one of them (default: AUDIT_SIGNING_KEY's and AUDIT_TRUSTED_PUBLIC_KEYS)")
    parser.add_argument("--expect", type=_anchor, action="append", default=[], metavar="SEQ:HEAD_HASH",
                        help="a checkpoint kept outside audit's database (seq and head_hash, as GET /v1/checkpoints "
                        "gave them, signature checked): the chain must reach entry SEQ and its hash be HEAD_HASH; "
                        "repeatable")
    parser.add_argument("--retired", type=_retired, action="append", default=[], metavar="KEY_ID:SEQ",
                        help="a retired key and the seq of the last checkpoint it signed: a later checkpoint naming "
                        "it is refused; repeatable (default: AUDIT_RETIRED_KEYS)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes that walk parts of a long chain (default: one per CPU)")
    options = parser.parse_args(args)
    settings = settings or Settings()
    # Only the database: verifying needs neither the broker nor the HTTP app, and changes nothing.
    engine = db.make_engine(settings.database_url)
    try:
        public_keys = _public_keys(settings, options.public_key)
        retired = dict(options.retired) if options.retired else settings.retired_keys
        report = AuditStore(engine).verify(public_keys, workers=max(1, options.workers), anchors=options.expect,
                                           retired=retired)
    except (SigningKeyError, OSError) as exc:
        print(f"cannot check the checkpoint signatures: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"cannot read the audit chain: {type(exc).__name__}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(report.model_dump_json())
    return 0 if report.intact else 1
