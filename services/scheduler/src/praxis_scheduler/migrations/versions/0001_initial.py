"""scheduler: protocol runs and their status history

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
S = "scheduler"


def upgrade() -> None:
    op.create_table(
        "protocol_runs",
        sa.Column("accession_id", sa.Uuid(), primary_key=True),
        sa.Column("protocol_name", sa.String(200), nullable=False),
        sa.Column("protocol_version", sa.String(50), nullable=False),
        sa.Column("definition_id", sa.Uuid(), nullable=False),
        sa.Column("source_commit", sa.String(64), nullable=False),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("parameters", JSONB(), nullable=False),
        sa.Column("initial_state", JSONB(), nullable=False),
        sa.Column("workcell", sa.String(200)),
        sa.Column("workcell_id", sa.Uuid()),
        sa.Column("workcell_name", sa.String(200)),
        sa.Column("pins", JSONB(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("bindings", JSONB(), nullable=False),
        sa.Column("result", JSONB()),
        sa.Column("error", JSONB()),
        sa.Column("final_state", JSONB()),
        sa.Column("asset_states", JSONB()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    for col in ("protocol_name", "status", "workcell_id", "created_at"):
        op.create_index(f"ix_runs_{col}", "protocol_runs", [col], schema=S)
    op.create_table(
        "run_status_history",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.Uuid(),
            sa.ForeignKey(f"{S}.protocol_runs.accession_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("previous", sa.String(30)),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("ix_history_run", "run_status_history", ["run_id"], schema=S)


def downgrade() -> None:
    op.drop_table("run_status_history", schema=S)
    op.drop_table("protocol_runs", schema=S)
