"""The audit chain in the database, on SQLite and PostgreSQL: append-only triggers, verification, tampering."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, MetaData, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from services.audit.app import MIGRATIONS
from services.audit.models import CHECKPOINTS, ENTRIES, GENESIS_HASH
from services.audit.signing import CheckpointSigner
from services.audit.store import HASHED_COLUMNS, AuditStore, canonical_fields, entry_hash
from shared import db, events
from tests.audit.chain import drop_guards, fill, new_entry


@pytest.fixture
def store(engine: Engine) -> AuditStore:
    # Checkpoints far apart: these tests are about the chain itself (test_checkpoints.py covers checkpoints).
    return AuditStore(engine, CheckpointSigner(Ed25519PrivateKey.generate()), checkpoint_every=1_000_000)


def test_migration_matches_the_model(engine: Engine) -> None:
    model = MetaData()
    ENTRIES.to_metadata(model)
    CHECKPOINTS.to_metadata(model)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        drift = [diff for diff in compare_metadata(context, model)
                 if not (diff[0] == "remove_table" and diff[1].name.startswith("alembic_version"))]
    assert drift == []


def test_empty_chain_is_intact(store: AuditStore) -> None:
    report = store.verify()
    assert report.model_dump() == {
        "intact": True, "length": 0, "head_hash": GENESIS_HASH, "first_bad_seq": None, "problem": None,
        "kind": None, "checkpoint_seq": None, "checkpoints": 0, "last_checkpoint_seq": None, "anchors": 0,
    }


def test_appended_entries_link_up_and_verify(store: AuditStore) -> None:
    case = str(uuid.uuid4())
    first = store.append_many([new_entry(case, event_type=events.SUBMITTED_V1, status="submitted",
                                         destination_id=None)])
    rest = store.append_many([new_entry(case), new_entry(), new_entry(case, reason="no_destination")])
    rows = first + rest
    assert [row["seq"] for row in rows] == [1, 2, 3, 4]
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 4))

    report = store.verify()
    assert report.intact
    assert report.length == 4
    assert report.head_hash == rows[-1]["hash"]
    assert report.first_bad_seq is None
    assert report.problem is None

    trail = store.trail(case)
    assert [entry.seq for entry in trail] == [1, 2, 4]
    assert trail[0].status == "submitted"
    assert trail[0].destination_id is None
    assert trail[2].reason == "no_destination"
    # What the database gives back is what was hashed: times stay aware UTC to the microsecond.
    assert trail[0].event_time == rows[0]["event_time"]
    assert trail[0].event_time.utcoffset() == timedelta(0)
    assert trail[1].destination_id == rows[1]["destination_id"]
    assert store.trail(str(uuid.uuid4())) == []


def test_redelivered_event_adds_nothing(store: AuditStore) -> None:
    entry = new_entry()
    assert store.append(entry)
    assert not store.append(entry)
    # Within one batch and across batches alike.
    twin, fresh = new_entry(), new_entry()
    appended = store.append_many([twin, entry, twin, fresh])
    assert [row["event_id"] for row in appended] == [twin.event_id, fresh.event_id]
    assert [row["seq"] for row in appended] == [2, 3]
    assert store.verify().length == 3


def test_hash_covers_every_field_and_is_canonical_json(store: AuditStore) -> None:
    entry = new_entry(source='/ozg/"quoted"\\ Bürgeramt\n',
                      event_time=datetime(2026, 1, 31, 13, 0, tzinfo=timezone(timedelta(hours=1))))
    row = store.append_many([entry])[0]
    fields = canonical_fields(row)
    document = dict(zip(HASHED_COLUMNS, fields, strict=True))
    assert document["event_time"] == "2026-01-31T12:00:00.000000+00:00"
    assert document["destination_id"] == str(entry.destination_id)
    # An auditor recomputes the hash with any JSON library.
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"))
    assert row["hash"] == hashlib.sha256(expected.encode()).hexdigest() == entry_hash(fields)
    # SQLite's stored form of a UUID (32 hex digits) hashes as the UUID.
    bare = tuple(entry.destination_id.hex if name == "destination_id" else value  # type: ignore[union-attr]
                 for name, value in zip(HASHED_COLUMNS, fields, strict=True))
    assert entry_hash(bare) == row["hash"]
    for index, name in enumerate(HASHED_COLUMNS):
        changed = list(fields)
        value = fields[index]
        changed[index] = value + 1 if isinstance(value, int) else "x" if value is None else value + "x"
        assert entry_hash(changed) != row["hash"], name
    assert store.verify().intact


def test_appends_store_values_exactly_as_core_inserts_them(store: AuditStore, engine: Engine) -> None:
    # append_many() sends driver-level SQL; verify() reads the stored text (SQLite) as Core would have written it.
    entry = new_entry(source='/ozg/"quoted"\\ Bürgeramt\n\t',
                      event_time=datetime(2026, 1, 31, 13, 0, 0, 123, tzinfo=timezone(timedelta(hours=1))))
    rows = store.append_many([entry, new_entry(destination_id=None, subject=None, status=None, reason="x")])
    assert store.verify().intact
    with engine.begin() as connection:
        connection.execute(ENTRIES.insert(), [{**row, "seq": row["seq"] + 2, "event_id": f"core-{row['seq']}"}
                                              for row in rows])
    content = ", ".join(f'"{name}"' for name in (*HASHED_COLUMNS, "hash") if name not in ("seq", "event_id"))
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(f"SELECT {content} FROM audit_entries ORDER BY seq").all()
    assert stored[:2] == stored[2:]


def test_triggers_refuse_update_and_delete(store: AuditStore, engine: Engine) -> None:
    fill(store, 2)
    with engine.connect() as connection:
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 1).values(status="closed"))
        connection.rollback()
        with pytest.raises(DBAPIError, match="append-only"):
            connection.execute(delete(ENTRIES).where(ENTRIES.c.seq == 2))
        connection.rollback()
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError, match="append-only"):
                connection.execute(text("TRUNCATE audit_entries"))
            connection.rollback()
        # An insert that would replace a row: SQLite's REPLACE deletes without firing DELETE triggers, PostgreSQL's
        # ON CONFLICT DO UPDATE is an update. Both keys of the table: seq and event_id.
        for clash in ("seq", "event_id"):
            row = dict(connection.execute(select(ENTRIES).where(ENTRIES.c.seq == 1)).mappings().one())
            row["status"] = "closed"
            if clash == "event_id":
                row["seq"] = 3
            replace = pg_insert(ENTRIES).values(row)
            replacing = (insert(ENTRIES).values(row).prefix_with("OR REPLACE") if engine.dialect.name == "sqlite"
                         else replace.on_conflict_do_update(index_elements=[clash],
                                                            set_={"status": replace.excluded.status}))
            with pytest.raises(DBAPIError, match="append-only"):
                connection.execute(replacing)
            connection.rollback()
        assert connection.scalar(select(ENTRIES.c.status).where(ENTRIES.c.seq == 1)) == "routed"
    assert store.verify().length == 2


def test_changed_entry_is_pinpointed(store: AuditStore, engine: Engine) -> None:
    fill(store, 5)
    drop_guards(engine)
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 3).values(status="decided"))
    report = store.verify()
    assert not report.intact
    assert report.first_bad_seq == 3
    assert report.problem is not None
    assert "changed" in report.problem
    assert report.kind == "changed"
    assert report.length == 5


def test_changed_time_is_pinpointed(store: AuditStore, engine: Engine) -> None:
    fill(store, 3)
    drop_guards(engine)
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2)
                           .values(event_time=datetime(2020, 1, 1, tzinfo=UTC)))
    report = store.verify()
    assert (report.intact, report.first_bad_seq) == (False, 2)


def test_rewritten_entry_with_fresh_hash_breaks_the_next_link(store: AuditStore, engine: Engine) -> None:
    rows = fill(store, 4)
    drop_guards(engine)
    forged_hash = entry_hash(canonical_fields({**rows[1], "status": "rejected"}))
    with engine.begin() as connection:
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2).values(status="rejected", hash=forged_hash))
    report = store.verify()
    assert report.first_bad_seq == 3
    assert report.problem is not None
    assert "does not link" in report.problem
    assert report.kind == "unlinked"


def test_removed_entry_is_detected_at_the_gap(store: AuditStore, engine: Engine) -> None:
    fill(store, 5)
    drop_guards(engine)
    with engine.begin() as connection:
        connection.execute(delete(ENTRIES).where(ENTRIES.c.seq == 3))
    report = store.verify()
    assert not report.intact
    assert report.first_bad_seq == 3
    assert report.problem is not None
    assert "missing" in report.problem
    assert report.kind == "removed"
    assert report.length == 4


def test_removed_first_entry_is_detected(store: AuditStore, engine: Engine) -> None:
    fill(store, 2)
    drop_guards(engine)
    with engine.begin() as connection:
        connection.execute(delete(ENTRIES).where(ENTRIES.c.seq == 1))
    report = store.verify()
    assert (report.intact, report.first_bad_seq) == (False, 1)


def test_swapped_entries_are_detected(store: AuditStore, engine: Engine) -> None:
    rows = fill(store, 4)
    drop_guards(engine)
    content = [name for name in (*HASHED_COLUMNS, "hash") if name != "seq"]
    with engine.begin() as connection:
        # Move entry 2 aside first: event_id is unique.
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2).values(event_id="moving"))
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 3)
                           .values({name: rows[1][name] for name in content}))
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == 2)
                           .values({name: rows[2][name] for name in content}))
    report = store.verify()
    assert not report.intact
    assert report.first_bad_seq == 2
    assert report.kind in ("changed", "unlinked")


def test_appended_after_forged_link_is_detected(store: AuditStore, engine: Engine) -> None:
    fill(store, 2)
    with engine.begin() as connection:
        # An insert with a correct seq and hash of its own but a made-up predecessor.
        row: dict[str, Any] = {**asdict(new_entry()), "seq": 3, "recorded_at": datetime.now(UTC),
                               "prev_hash": "f" * 64}
        row["hash"] = entry_hash(canonical_fields(row))
        connection.execute(ENTRIES.insert(), [row])
    report = store.verify()
    assert report.first_bad_seq == 3
    assert report.problem is not None
    assert "does not link" in report.problem
    assert report.kind == "unlinked"


def test_value_of_the_wrong_type_is_a_change(tmp_path: Path) -> None:
    # Only SQLite lets a column hold a value of another type; PostgreSQL refuses the UPDATE itself.
    engine = db.make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        db.migrate(engine, MIGRATIONS, "audit")
        store = AuditStore(engine)
        fill(store, 3)
        drop_guards(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE audit_entries SET \"offset\" = 'forty-two' WHERE seq = 2"))
        report = store.verify()
        assert report.first_bad_seq == 2
        assert report.problem is not None
        assert "changed" in report.problem
    finally:
        engine.dispose()
