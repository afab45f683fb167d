"""asset_manager: workcells can be drained

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
S = "asset_manager"


def upgrade() -> None:
    op.add_column(
        "workcells",
        sa.Column("drained", sa.Boolean(), nullable=False, server_default=sa.false()),
        schema=S,
    )
    op.add_column("workcells", sa.Column("drain_reason", sa.String(2000)), schema=S)


def downgrade() -> None:
    op.drop_column("workcells", "drain_reason", schema=S)
    op.drop_column("workcells", "drained", schema=S)
