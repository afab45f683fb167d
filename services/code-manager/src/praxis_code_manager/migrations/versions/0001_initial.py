"""code_manager: protocol sources and definitions

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
S = "code_manager"


def upgrade() -> None:
    op.create_table(
        "protocol_sources",
        sa.Column("accession_id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("pinned_commit", sa.String(64)),
        sa.Column("commit", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("last_synced_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_table(
        "protocol_definitions",
        sa.Column("accession_id", sa.Uuid(), primary_key=True),
        sa.Column(
            "source_id",
            sa.Uuid(),
            sa.ForeignKey(f"{S}.protocol_sources.accession_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("commit", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("code_bundle", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source_id", "commit", "name", "version"),
        schema=S,
    )
    op.create_index("ix_definitions_source", "protocol_definitions", ["source_id"], schema=S)
    op.create_index("ix_definitions_name", "protocol_definitions", ["name"], schema=S)
    op.create_index("ix_definitions_created", "protocol_definitions", ["created_at"], schema=S)


def downgrade() -> None:
    op.drop_table("protocol_definitions", schema=S)
    op.drop_table("protocol_sources", schema=S)
