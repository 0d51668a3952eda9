"""``python -m services.audit verify`` as an operator runs it: JSON on stdout, the verdict in the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete

from services.audit.app import MIGRATIONS
from services.audit.models import ENTRIES
from services.audit.signing import CheckpointSigner, development_key_file, resolve_private_key
from services.audit.store import AuditStore
from shared import db
from tests.audit.chain import drop_guards, fill

ROOT = Path(__file__).resolve().parents[2]


def verify_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("AUDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "services.audit", "verify", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**env, "AUDIT_DATABASE_URL": url}, check=False,
    )


def test_verify_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = db.make_engine(url)
    try:
        db.migrate(engine, MIGRATIONS, "audit")
        # The development key file beside the database, as the service creates it on its first start.
        key = resolve_private_key(None, key_file=development_key_file(url), production=False)
        assert key is not None
        rows = fill(AuditStore(engine, CheckpointSigner(key), checkpoint_every=2), 3)

        intact = verify_cli(url)
        assert intact.returncode == 0, intact.stderr
        assert json.loads(intact.stdout) == {
            "intact": True, "length": 3, "head_hash": rows[-1]["hash"], "first_bad_seq": None, "problem": None,
            "kind": None, "checkpoint_seq": None, "checkpoints": 1, "last_checkpoint_seq": 3,
        }

        # An auditor holding only the public key; and one holding the wrong key.
        public = tmp_path / "audit-public.pem"
        public.write_bytes(CheckpointSigner(key).public_pem)
        assert verify_cli(url, "--public-key", str(public)).returncode == 0
        public.write_bytes(CheckpointSigner(Ed25519PrivateKey.generate()).public_pem)
        wrong = verify_cli(url, "--public-key", str(public))
        assert wrong.returncode == 1
        assert json.loads(wrong.stdout)["kind"] == "checkpoint_signature_invalid"

        drop_guards(engine)
        with engine.begin() as connection:
            connection.execute(delete(ENTRIES).where(ENTRIES.c.seq == 2))
        broken = verify_cli(url)
        assert broken.returncode == 1
        report = json.loads(broken.stdout)
        assert report["intact"] is False
        assert report["first_bad_seq"] == 2
        assert report["kind"] == "removed"
        assert report["length"] == 2
    finally:
        engine.dispose()

    unreadable = verify_cli(f"sqlite:///{tmp_path / 'empty.db'}")
    assert unreadable.returncode == 2
    assert "cannot read the audit chain" in unreadable.stderr
    missing_key = verify_cli(url, "--public-key", str(tmp_path / "nowhere.pem"))
    assert missing_key.returncode == 2
    assert "cannot check the checkpoint signatures" in missing_key.stderr
