"""Indexes for the audit queries of ``segnode audit`` (time ranges, states, series).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_associations_started_at", "associations", ["started_at"])
    op.create_index("ix_instances_series", "instances", ["series_instance_uid"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_series", "jobs", ["series_instance_uid"])
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_what", "events", ["what"])


def downgrade() -> None:
    for name, table in (
        ("ix_events_what", "events"),
        ("ix_events_at", "events"),
        ("ix_jobs_series", "jobs"),
        ("ix_jobs_state", "jobs"),
        ("ix_instances_series", "instances"),
        ("ix_associations_started_at", "associations"),
    ):
        op.drop_index(name, table_name=table)
