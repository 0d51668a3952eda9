"""The outbox of routing's events (stored with the status change they announce), withdrawals that arrived
before their case was routed, indexes for keyset paging and ordered webhook deliveries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(200), nullable=False, unique=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("key", sa.String(200), nullable=False, index=True),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True, index=True),
    )
    op.create_table(
        "early_withdrawals",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("change", sa.JSON(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    # Keyset paging of a destination's cases: (destination, updated_at, case_id).
    op.create_index("ix_routed_cases_destination_updated", "routed_cases",
                    ["destination_id", "updated_at", "case_id"])
    # A case's deliveries are made in order: the delivery job looks for an earlier pending one of the same case.
    op.create_index("ix_webhook_deliveries_case_id", "webhook_deliveries", ["case_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_case_id", table_name="webhook_deliveries")
    op.drop_index("ix_routed_cases_destination_updated", table_name="routed_cases")
    op.drop_table("early_withdrawals")
    op.drop_table("outbox")
