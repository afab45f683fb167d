"""scheduler: GIN index on protocol_runs.bindings for the run list's asset filters

The run list filters by the asset a run was bound to (``resource_accession_id``,
``machine_accession_id``) with ``bindings @> '[{"asset_id": …}]'``. Without an index that is a
sequential scan reading every run's bindings; ``jsonb_path_ops`` indexes exactly containment and is
smaller than the default GIN operator class.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index(
        "ix_scheduler_protocol_runs_bindings",
        "protocol_runs",
        ["bindings"],
        schema="scheduler",
        postgresql_using="gin",
        postgresql_ops={"bindings": "jsonb_path_ops"},
    )


def downgrade() -> None:
    op.drop_index("ix_scheduler_protocol_runs_bindings", "protocol_runs", schema="scheduler")
