"""asset_manager: PyLabRobot type catalog, asset status history

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
S = "asset_manager"


def upgrade() -> None:
    op.create_table(
        "catalog",
        sa.Column("fqn", sa.String(300), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("is_factory", sa.Boolean(), nullable=False),
        sa.Column("instantiable", sa.Boolean(), nullable=False),
        sa.Column("category", sa.String(100)),
        sa.Column("module", sa.String(300), nullable=False),
        sa.Column("bases", JSONB(), nullable=False),
        sa.Column("pylabrobot_version", sa.String(50), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("ix_catalog_name", "catalog", ["name"], schema=S)
    op.create_index("ix_catalog_kind", "catalog", ["kind"], schema=S)
    op.create_table(
        "asset_status_history",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "asset_id",
            sa.Uuid(),
            sa.ForeignKey(f"{S}.assets.accession_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("previous", sa.String(20)),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("run_id", sa.Uuid()),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index(
        "ix_asset_status_history_asset_at", "asset_status_history", ["asset_id", "at"], schema=S
    )
    op.create_index("ix_asset_status_history_run_id", "asset_status_history", ["run_id"], schema=S)
    op.create_index("ix_asset_status_history_at", "asset_status_history", ["at"], schema=S)


def downgrade() -> None:
    op.drop_table("asset_status_history", schema=S)
    op.drop_table("catalog", schema=S)
