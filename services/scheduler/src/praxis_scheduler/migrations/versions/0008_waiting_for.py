"""scheduler: why a queued run waits (assets_busy, waiting_for_edge, workcell_drained)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("protocol_runs", sa.Column("waiting_for", sa.String(40)), schema="scheduler")
    op.add_column(
        "protocol_runs",
        sa.Column("waiting_since", sa.DateTime(timezone=True)),
        schema="scheduler",
    )


def downgrade() -> None:
    op.drop_column("protocol_runs", "waiting_since", schema="scheduler")
    op.drop_column("protocol_runs", "waiting_for", schema="scheduler")
