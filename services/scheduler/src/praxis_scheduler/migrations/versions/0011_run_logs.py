"""scheduler: each run's output lines (RunLogged)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    op.create_table(
        "run_logs",
        sa.Column(
            "run_id",
            sa.Uuid(),
            sa.ForeignKey("scheduler.protocol_runs.accession_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("level", sa.String(20), nullable=False),
        sa.Column("level_no", sa.Integer(), nullable=False),
        sa.Column("logger", sa.String(200)),
        sa.Column("message", sa.Text(), nullable=False),
        schema="scheduler",
    )


def downgrade() -> None:
    op.drop_table("run_logs", schema="scheduler")
