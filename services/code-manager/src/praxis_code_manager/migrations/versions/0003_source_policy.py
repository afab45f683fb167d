"""code_manager: credentials reference and discovery problems of a source

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column(
        "protocol_sources", sa.Column("credentials_ref", sa.Text()), schema="code_manager"
    )
    op.add_column(
        "protocol_sources",
        sa.Column(
            "problems", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")
        ),
        schema="code_manager",
    )


def downgrade() -> None:
    op.drop_column("protocol_sources", "problems", schema="code_manager")
    op.drop_column("protocol_sources", "credentials_ref", schema="code_manager")
