"""Helpers for the audit tests: entries to append, and an intruder's tools."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, text, update

from services.audit.models import ENTRIES
from services.audit.store import AuditStore, NewEntry, canonical_fields, entry_hash
from shared import events, topics


def new_entry(subject: str | None = None, **overrides: Any) -> NewEntry:
    """A plausible entry of a routed event; ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": events.ROUTED_V1,
        "source": "/ozg/routing",
        "subject": subject or str(uuid.uuid4()),
        "event_time": datetime.now(UTC),
        "topic": topics.ROUTED,
        "partition": 1,
        "offset": 42,
        "data_sha256": "a" * 64,
        "status": "routed",
        "destination_id": uuid.uuid4(),
        "reason": None,
    }
    fields.update(overrides)
    return NewEntry(**fields)


def drop_guards(engine: Engine) -> None:
    """Remove the append-only triggers, as an intruder with DDL rights could."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_entries_append_only ON audit_entries"))
        else:
            connection.execute(text("DROP TRIGGER audit_entries_no_update"))
            connection.execute(text("DROP TRIGGER audit_entries_no_delete"))
            connection.execute(text("DROP TRIGGER audit_entries_no_replace"))


def fill(store: AuditStore, count: int) -> list[dict[str, Any]]:
    """Append ``count`` fresh entries; returns the rows as appended."""
    return store.append_many([new_entry() for _ in range(count)])


def drop_checkpoint_guards(engine: Engine) -> None:
    """Remove the append-only triggers of the checkpoints."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("DROP TRIGGER audit_checkpoints_append_only ON audit_checkpoints"))
        else:
            connection.execute(text("DROP TRIGGER audit_checkpoints_no_update"))
            connection.execute(text("DROP TRIGGER audit_checkpoints_no_delete"))
            connection.execute(text("DROP TRIGGER audit_checkpoints_no_replace"))


def rewrite_from_seq_2(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Change entry 2 and re-hash every entry from there on, as an intruder with write access would: the chain
    alone still looks intact."""
    prev_hash = rows[0]["hash"]
    for row in rows[1:]:
        forged: dict[str, Any] = {**row, "prev_hash": prev_hash}
        if row["seq"] == 2:
            forged["status"] = "rejected"
        forged["hash"] = prev_hash = entry_hash(canonical_fields(forged))
        connection.execute(update(ENTRIES).where(ENTRIES.c.seq == row["seq"])
                           .values(status=forged["status"], prev_hash=forged["prev_hash"], hash=forged["hash"]))
