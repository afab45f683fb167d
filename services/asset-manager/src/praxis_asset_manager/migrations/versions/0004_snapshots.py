"""asset_manager: workcell state snapshots, recorded state on assets

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
S = "asset_manager"


def upgrade() -> None:
    op.add_column("assets", sa.Column("state_recorded_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("assets", sa.Column("state_snapshot_id", sa.Uuid()), schema=S)
    op.create_table(
        "snapshots",
        sa.Column("snapshot_id", sa.Uuid(), primary_key=True),
        sa.Column("workcell_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("run_id", sa.Uuid()),
        sa.Column("checkpoint", sa.Text()),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("asset_ids", JSONB(), nullable=False),
        sa.Column("asset_names", JSONB(), nullable=False),
        sa.Column("object_name", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index(
        "ix_snapshots_workcell_taken", "snapshots", ["workcell_name", "taken_at"], schema=S
    )
    op.create_index("ix_snapshots_run_id", "snapshots", ["run_id"], schema=S)


def downgrade() -> None:
    op.drop_table("snapshots", schema=S)
    op.drop_column("assets", "state_snapshot_id", schema=S)
    op.drop_column("assets", "state_recorded_at", schema=S)
