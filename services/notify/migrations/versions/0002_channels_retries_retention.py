"""Postfach ids and postal addresses on contacts, the persisted retry schedule on notifications, the retention
clock and the outbox of deletion events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("postfach_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("street", sa.String(100), nullable=True))
        batch.add_column(sa.Column("postal_code", sa.String(10), nullable=True))
        batch.add_column(sa.Column("city", sa.String(100), nullable=True))
        batch.add_column(sa.Column("country", sa.String(2), nullable=True))
        batch.add_column(sa.Column("ended_at", UTCDateTime(), nullable=True))
    op.create_index("ix_contacts_ended_at", "contacts", ["ended_at"])
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("last_attempt_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("outcome_published_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("subject", sa.String(300), nullable=True))
        batch.add_column(sa.Column("body", sa.Text(), nullable=True))
        batch.add_column(sa.Column("language", sa.String(2), nullable=True))
    op.create_index("ix_notifications_next_attempt_at", "notifications", ["next_attempt_at"])
    # Outcomes recorded before this migration were published by the code of the time.
    op.execute("UPDATE notifications SET outcome_published_at = created_at WHERE status IN ('sent', 'failed')")
    # A row 0001 left pending was cut short mid-delivery: a lapsed attempt, which the scheduler reports as failed.
    op.execute("UPDATE notifications SET status = 'sending', next_attempt_at = created_at WHERE status = 'pending'")
    op.create_table(
        "deletions",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("categories", sa.String(200), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("deletions")
    op.drop_index("ix_notifications_next_attempt_at", "notifications")
    with op.batch_alter_table("notifications") as batch:
        for name in ("language", "body", "subject", "outcome_published_at", "last_attempt_at", "next_attempt_at"):
            batch.drop_column(name)
    op.drop_index("ix_contacts_ended_at", "contacts")
    with op.batch_alter_table("contacts") as batch:
        for name in ("ended_at", "country", "city", "postal_code", "street", "postfach_id"):
            batch.drop_column(name)
