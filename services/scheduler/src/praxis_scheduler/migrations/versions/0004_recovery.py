"""scheduler: outbox; the edge executing each run; retry links

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from praxis_runtime.outbox import create_outbox

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    create_outbox(op, "scheduler")
    op.add_column("protocol_runs", sa.Column("edge_instance", sa.String(64)), schema="scheduler")
    op.add_column("protocol_runs", sa.Column("retry_of", sa.Uuid()), schema="scheduler")
    op.add_column("protocol_runs", sa.Column("retried_by", sa.Uuid()), schema="scheduler")
    op.create_index(
        "ix_scheduler_protocol_runs_edge_instance",
        "protocol_runs",
        ["edge_instance"],
        schema="scheduler",
    )


def downgrade() -> None:
    op.drop_index("ix_scheduler_protocol_runs_edge_instance", "protocol_runs", schema="scheduler")
    for column in ("retried_by", "retry_of", "edge_instance"):
        op.drop_column("protocol_runs", column, schema="scheduler")
    op.drop_table("outbox", schema="scheduler")
