"""audit: the events trail and its position per stream incarnation

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
S = "audit"


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("epoch", sa.Text(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.Text()),
        sa.Column("publisher", sa.Text()),
        sa.Column("correlation_id", sa.Text()),
        sa.Column("run_id", postgresql.UUID(as_uuid=True)),
        sa.Column("workcell", sa.Text()),
        sa.Column(
            "asset_ids",
            postgresql.ARRAY(postgresql.UUID(as_uuid=True)),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.UniqueConstraint("epoch", "stream_seq", name="uq_events_stream"),
        schema=S,
    )
    for name, columns in (
        ("ix_events_type", ["type", "id"]),
        ("ix_events_run", ["run_id", "id"]),
        ("ix_events_workcell", ["workcell", "id"]),
        ("ix_events_actor", ["actor", "id"]),
        ("ix_events_correlation", ["correlation_id", "id"]),
        ("ix_events_occurred", ["occurred_at"]),
    ):
        op.create_index(name, "events", columns, schema=S)
    op.create_index(
        "ix_events_assets", "events", ["asset_ids"], schema=S, postgresql_using="gin"
    )
    op.create_table(
        "positions",
        sa.Column("epoch", sa.Text(), primary_key=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("positions", schema=S)
    op.drop_table("events", schema=S)
