"""scheduler: protocol-function call log

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
S = "scheduler"


def upgrade() -> None:
    op.create_table(
        "function_calls",
        sa.Column("call_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "run_id",
            sa.Uuid(),
            sa.ForeignKey(f"{S}.protocol_runs.accession_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("parent_call_id", sa.Uuid()),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("function", sa.String(200), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("arguments", JSONB(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text()),
        schema=S,
    )
    op.create_index("ix_calls_run", "function_calls", ["run_id"], schema=S)
    op.create_index("ix_calls_started", "function_calls", ["started_at"], schema=S)


def downgrade() -> None:
    op.drop_table("function_calls", schema=S)
