"""The imported official directory and PLZ table, data versions for replicas, clearing, destination webhooks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_versions",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stand", sa.String(8), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("source", sa.String(300), nullable=True),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "dir_laender",
        sa.Column("key", sa.String(2), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("seat", sa.String(100), nullable=False),
    )
    op.create_table(
        "dir_regierungsbezirke",
        sa.Column("key", sa.String(3), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("seat", sa.String(100), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "dir_regionen",
        sa.Column("key", sa.String(4), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("seat", sa.String(100), nullable=False),
    )
    op.create_table(
        "dir_kreise",
        sa.Column("key", sa.String(5), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("seat", sa.String(100), nullable=False),
        sa.Column("type_code", sa.String(2), nullable=False),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("kreisfrei", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "dir_verbaende",
        sa.Column("ars", sa.String(9), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("seat", sa.String(100), nullable=False),
        sa.Column("type_code", sa.String(2), nullable=False),
        sa.Column("type", sa.String(60), nullable=False),
    )
    op.create_table(
        "dir_gemeinden",
        sa.Column("ars", sa.String(12), primary_key=True),
        sa.Column("ags", sa.String(8), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("type_code", sa.String(2), nullable=False),
        sa.Column("type", sa.String(60), nullable=False),
        sa.Column("area_ha", sa.BigInteger(), nullable=True),
        sa.Column("population", sa.Integer(), nullable=True),
        sa.Column("postal_code", sa.String(5), nullable=True),
        sa.Column("postal_code_unique", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "dir_postcodes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("postal_code", sa.String(5), nullable=False, index=True),
        sa.Column("ags", sa.String(8), nullable=False),
        sa.Column("place", sa.String(200), nullable=False),
        sa.Column("osm_id", sa.String(30), nullable=True),
    )
    op.create_table(
        "clearing_cases",
        sa.Column("case_id", sa.Uuid(), primary_key=True),
        sa.Column("reference", sa.String(32), nullable=False),
        sa.Column("leika_key", sa.String(14), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.Column("cause_event_id", sa.String(200), nullable=False),
        sa.Column("application", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("destinations") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(2000), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destinations") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook_url")
    for table in ("clearing_cases", "dir_postcodes", "dir_gemeinden", "dir_verbaende", "dir_kreise",
                  "dir_regionen", "dir_regierungsbezirke", "dir_laender", "data_versions"):
        op.drop_table(table)
