"""SQLite: refuse INSERT OR REPLACE on the chain and its checkpoints.

SQLite's REPLACE removes the row in the way without firing its DELETE triggers (unless ``recursive_triggers`` is on
in the connection that replaces), so the append-only triggers of 0001 and 0002 let a plain DML statement swap an
entry. An insert meeting a row it would replace is refused before that. PostgreSQL needs nothing: its
``ON CONFLICT DO UPDATE`` fires the UPDATE trigger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The table, and the condition under which an insert would replace a row: every unique key of the table.
_TRIGGERS = {
    "audit_entries_no_replace": ("audit_entries", "seq = NEW.seq OR event_id = NEW.event_id"),
    "audit_checkpoints_no_replace": ("audit_checkpoints", "seq = NEW.seq"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, (table, clash) in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN EXISTS (SELECT 1 FROM {table} WHERE {clash}) "  # noqa: S608 - this module's constants
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
