"""Deletions after the retention period (SPEC §7), kept until published on ozg.privacy.deletions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
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
        "deletions",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("categories", sa.String(200), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("deletions")
