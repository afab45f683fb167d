"""asset_manager: outbox

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from praxis_runtime.outbox import create_outbox

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    create_outbox(op, "asset_manager")


def downgrade() -> None:
    op.drop_table("outbox", schema="asset_manager")
