"""scheduler: what a failed or cancelled run leaves in its assets' state (keep | rollback)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column(
        "protocol_runs",
        sa.Column("on_failure", sa.String(20), nullable=False, server_default="keep"),
        schema="scheduler",
    )


def downgrade() -> None:
    op.drop_column("protocol_runs", "on_failure", schema="scheduler")
