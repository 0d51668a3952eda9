"""Redelivery of failed webhook deliveries: when a delivery first failed (its body is kept for a while from then)
and was last redelivered (its new retry window), and the deletions of kept bodies, recorded for publishing as intake
and notify record theirs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_deliveries", sa.Column("first_failed_at", UTCDateTime(), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("redelivered_at", UTCDateTime(), nullable=True))
    # Deliveries that failed before kept no body: they cannot be redelivered, but they get their date all the same.
    op.execute("UPDATE webhook_deliveries SET first_failed_at = settled_at WHERE status = 'failed'")
    op.create_table(
        "deletions",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("categories", sa.String(200), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("deletions")
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("redelivered_at")
        batch.drop_column("first_failed_at")
