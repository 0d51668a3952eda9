"""``python -m services.audit verify`` as an operator runs it: JSON on stdout, the verdict in the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import delete

from services.audit.app import MIGRATIONS
from services.audit.models import ENTRIES
from services.audit.store import AuditStore
from shared import db
from tests.audit.chain import drop_guards, fill

ROOT = Path(__file__).resolve().parents[2]


def verify_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.audit", "verify"], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "AUDIT_DATABASE_URL": url}, check=False,
    )


def test_verify_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = db.make_engine(url)
    try:
        db.migrate(engine, MIGRATIONS, "audit")
        rows = fill(AuditStore(engine), 3)

        intact = verify_cli(url)
        assert intact.returncode == 0, intact.stderr
        assert json.loads(intact.stdout) == {
            "intact": True, "length": 3, "head_hash": rows[-1]["hash"], "first_bad_seq": None, "problem": None,
        }

        drop_guards(engine)
        with engine.begin() as connection:
            connection.execute(delete(ENTRIES).where(ENTRIES.c.seq == 2))
        broken = verify_cli(url)
        assert broken.returncode == 1
        report = json.loads(broken.stdout)
        assert report["intact"] is False
        assert report["first_bad_seq"] == 2
        assert report["length"] == 2
    finally:
        engine.dispose()

    unreadable = verify_cli(f"sqlite:///{tmp_path / 'empty.db'}")
    assert unreadable.returncode == 2
    assert "cannot read the audit chain" in unreadable.stderr
