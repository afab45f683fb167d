"""scheduler: who submitted each run, and whose request made each status change

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column(
        "protocol_runs", sa.Column("submitted_by", sa.String(200), nullable=True), schema="scheduler"
    )
    op.add_column(
        "run_status_history", sa.Column("actor", sa.String(200), nullable=True), schema="scheduler"
    )


def downgrade() -> None:
    op.drop_column("run_status_history", "actor", schema="scheduler")
    op.drop_column("protocol_runs", "submitted_by", schema="scheduler")
