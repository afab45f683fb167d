"""asset_manager: workcells, assets, reservations

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
S = "asset_manager"


def upgrade() -> None:
    op.create_table(
        "workcells",
        sa.Column("accession_id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("properties", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_table(
        "assets",
        sa.Column("accession_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "workcell_id",
            sa.Uuid(),
            sa.ForeignKey(f"{S}.workcells.accession_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("fqn", sa.String(300), nullable=False),
        sa.Column("type_mro", JSONB(), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("backend", sa.JSON()),
        sa.Column("state", sa.JSON()),
        sa.Column("parent_id", sa.Uuid()),
        sa.Column("slot", sa.String(200)),
        sa.Column("properties", JSONB(), nullable=False),
        sa.Column("shareable", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("workcell_id", "name"),
        schema=S,
    )
    for col in ("workcell_id", "kind", "parent_id", "status", "created_at"):
        op.create_index(f"ix_assets_{col}", "assets", [col], schema=S)
    op.create_table(
        "reservations",
        sa.Column("run_id", sa.Uuid(), primary_key=True),
        sa.Column("request", JSONB(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("bindings", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("ix_reservations_status", "reservations", ["status"], schema=S)


def downgrade() -> None:
    op.drop_table("reservations", schema=S)
    op.drop_table("assets", schema=S)
    op.drop_table("workcells", schema=S)
