"""Outbox: keep the encoded submitted event with a pending reservation, so a crash before acceptance is recovered.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        # The submitted event's data (personal data): held only while the case is pending, cleared on acceptance.
        batch.add_column(sa.Column("submission", sa.Text(), nullable=True))
        batch.create_index("ix_cases_state_submitted_at", ["state", "submitted_at"])


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_state_submitted_at")
        batch.drop_column("submission")
