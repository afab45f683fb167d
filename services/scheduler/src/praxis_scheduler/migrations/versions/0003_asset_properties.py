"""scheduler: required asset properties per requirement

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column(
        "protocol_runs",
        sa.Column("asset_properties", JSONB(), nullable=False, server_default=sa.text("'{}'")),
        schema="scheduler",
    )


def downgrade() -> None:
    op.drop_column("protocol_runs", "asset_properties", schema="scheduler")
