"""``python -m services.audit verify`` as an operator runs it: JSON on stdout, the verdict in the exit code."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete

from services.audit.app import MIGRATIONS, verify_command
from services.audit.models import ENTRIES
from services.audit.settings import Settings
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
            "kind": None, "checkpoint_seq": None, "checkpoints": 1, "last_checkpoint_seq": 3, "anchors": 0,
        }
        # Checkpoints the auditor kept (seq:head_hash), repeatable: the chain reaches them with their hashes.
        kept = [f"--expect={row['seq']}:{row['hash']}" for row in rows[1:]]
        anchored = verify_cli(url, *kept)
        assert anchored.returncode == 0, anchored.stderr
        assert json.loads(anchored.stdout)["anchors"] == 2
        beyond = verify_cli(url, "--expect", f"5:{'b' * 64}")
        assert beyond.returncode == 1
        assert (json.loads(beyond.stdout)["kind"], json.loads(beyond.stdout)["first_bad_seq"]) == ("truncated", 4)
        malformed = verify_cli(url, "--expect", "5")
        assert malformed.returncode == 2
        assert "SEQ:HEAD_HASH" in malformed.stderr

        # An auditor holding only the public key; and one holding the wrong key.
        public = tmp_path / "audit-public.pem"
        public.write_bytes(CheckpointSigner(key).public_pem)
        assert verify_cli(url, "--public-key", str(public)).returncode == 0
        public.write_bytes(CheckpointSigner(Ed25519PrivateKey.generate()).public_pem)
        wrong = verify_cli(url, "--public-key", str(public))
        assert wrong.returncode == 1
        assert json.loads(wrong.stdout)["kind"] == "checkpoint_key_unknown"

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


def test_verify_after_a_rotation_of_the_signing_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    current_key = Ed25519PrivateKey.generate()
    earlier, current = CheckpointSigner(Ed25519PrivateKey.generate()), CheckpointSigner(current_key)
    engine = db.make_engine(url)
    try:
        db.migrate(engine, MIGRATIONS, "audit")
        fill(AuditStore(engine, earlier, checkpoint_every=2), 2)
        fill(AuditStore(engine, current, checkpoint_every=2), 2)
    finally:
        engine.dispose()
    earlier_pem, current_pem = tmp_path / "earlier.pem", tmp_path / "current.pem"
    earlier_pem.write_bytes(earlier.public_pem)
    current_pem.write_bytes(current.public_pem)

    # The auditor's copies: one file per key, or both in one file (as GET /v1/checkpoints/public-keys lists them).
    assert verify_cli(url, "--public-key", str(earlier_pem), "--public-key", str(current_pem)).returncode == 0
    both = tmp_path / "both.pem"
    both.write_bytes(current.public_pem + earlier.public_pem)
    report = verify_cli(url, "--public-key", str(both))
    assert (report.returncode, json.loads(report.stdout)["checkpoints"]) == (0, 2)
    only_current = verify_cli(url, "--public-key", str(current_pem))
    assert only_current.returncode == 1
    assert (json.loads(only_current.stdout)["kind"], json.loads(only_current.stdout)["checkpoint_seq"]) == (
        "checkpoint_key_unknown", 2)

    # The earlier key retired after its checkpoint 2: honest; retired after 1: its checkpoint 2 is refused.
    retired_ok = verify_cli(url, "--public-key", str(both), "--retired", f"{earlier.key_id}:2")
    assert retired_ok.returncode == 0, retired_ok.stdout
    retired_early = verify_cli(url, "--public-key", str(both), "--retired", f"{earlier.key_id}:1")
    assert (retired_early.returncode, json.loads(retired_early.stdout)["kind"]) == (1, "checkpoint_key_retired")
    assert verify_cli(url, "--retired", "nokey:1").returncode == 2

    # On the service's own settings: the signing key's public half and AUDIT_TRUSTED_PUBLIC_KEYS.
    configured = Settings(database_url=url, signing_key=base64.b64encode(current_key.private_bytes_raw()).decode(),
                          trusted_public_keys=earlier.public_pem.decode())
    assert verify_command(["--workers", "1"], configured) == 0
    pinned = configured.model_copy(update={"retired_keys": {earlier.key_id: 1}})
    assert verify_command(["--workers", "1"], pinned) == 1
    untrusted = configured.model_copy(update={"trusted_public_keys": None})
    assert verify_command(["--workers", "1"], untrusted) == 1
    garbled = configured.model_copy(update={"trusted_public_keys": "-----BEGIN PUBLIC KEY-----\nnope\n"
                                                                   "-----END PUBLIC KEY-----"})
    assert verify_command(["--workers", "1"], garbled) == 2
    missing = verify_cli(url, "--public-key", str(tmp_path / "audit.db"))  # no PEM block in it
    assert (missing.returncode, "no PEM public key" in missing.stderr) == (2, True)


@pytest.mark.parametrize("malformed", ["5", f"0:{'b' * 64}", f"{2**63}:{'b' * 64}", f"5:{'B' * 64}",
                                       f"5:{'b' * 63}", f"x:{'b' * 64}", f"5:{'b' * 64}:1", f" 5:{'b' * 64}",
                                       f"{'9' * 5000}:{'b' * 64}"])
def test_verify_refuses_a_malformed_expected_checkpoint(malformed: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        verify_command(["--expect", malformed], Settings(database_url="sqlite://"))
    assert exited.value.code == 2
    assert "SEQ:HEAD_HASH" in capsys.readouterr().err
