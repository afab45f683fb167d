"""code_manager: outbox

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from praxis_runtime.outbox import create_outbox

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    create_outbox(op, "code_manager")


def downgrade() -> None:
    op.drop_table("outbox", schema="code_manager")
