"""scheduler: runs on demand (mode immediate) and in time (not_before, deadline)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.add_column(
        "protocol_runs",
        sa.Column("mode", sa.String(20), nullable=False, server_default="queued"),
        schema="scheduler",
    )
    op.add_column(
        "protocol_runs", sa.Column("not_before", sa.DateTime(timezone=True)), schema="scheduler"
    )
    op.add_column(
        "protocol_runs", sa.Column("deadline", sa.DateTime(timezone=True)), schema="scheduler"
    )


def downgrade() -> None:
    op.drop_column("protocol_runs", "deadline", schema="scheduler")
    op.drop_column("protocol_runs", "not_before", schema="scheduler")
    op.drop_column("protocol_runs", "mode", schema="scheduler")
