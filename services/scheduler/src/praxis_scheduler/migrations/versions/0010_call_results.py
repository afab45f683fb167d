"""scheduler: what each protocol-function call returned (bounded; see CALL_RESULT_BYTES)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.add_column("function_calls", sa.Column("result", JSONB), schema="scheduler")


def downgrade() -> None:
    op.drop_column("function_calls", "result", schema="scheduler")
