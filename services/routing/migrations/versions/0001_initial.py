"""Destinations, routing decisions, and the processed-events table of the idempotent consumer.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("destination_id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("authority_ars", sa.String(12), nullable=False, index=True),
        sa.Column("leika_keys", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "routed_cases",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("reference", sa.String(32), nullable=False),
        sa.Column("leika_key", sa.String(14), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("destination_id", sa.Uuid(), nullable=True, index=True),
        sa.Column("authority_ars", sa.String(12), nullable=True),
        sa.Column("rule", sa.String(100), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(100), primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("processed_events")
    op.drop_table("routed_cases")
    op.drop_table("destinations")
