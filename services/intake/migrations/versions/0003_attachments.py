"""Attachments (claim-check records) and the destination each case was dispatched to.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("destination_id", sa.Uuid(), nullable=True))
    op.create_table(
        "attachments",
        sa.Column("attachment_id", sa.Uuid(), primary_key=True),
        sa.Column("client_id", sa.Uuid(), nullable=False, index=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha512", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("case_id", sa.Uuid(), sa.ForeignKey("cases.case_id", ondelete="SET NULL"), nullable=True,
                  index=True),
    )


def downgrade() -> None:
    op.drop_table("attachments")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("destination_id")
