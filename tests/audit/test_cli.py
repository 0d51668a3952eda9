"""``python -m services.audit verify`` as an operator runs it: JSON on stdout, the verdict in the exit code."""

from __future__ import annotations

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


@pytest.mark.parametrize("malformed", ["5", f"0:{'b' * 64}", f"{2**63}:{'b' * 64}", f"5:{'B' * 64}",
                                       f"5:{'b' * 63}", f"x:{'b' * 64}", f"5:{'b' * 64}:1", f" 5:{'b' * 64}",
                                       f"{'9' * 5000}:{'b' * 64}"])
def test_verify_refuses_a_malformed_expected_checkpoint(malformed: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        verify_command(["--expect", malformed], Settings(database_url="sqlite://"))
    assert exited.value.code == 2
    assert "SEQ:HEAD_HASH" in capsys.readouterr().err
