"""Job pipeline: the route, failure detail, stage timings and outputs of a job; per-destination deliveries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("route", sa.String(64), nullable=True))
        batch.add_column(sa.Column("detail", sa.Text, nullable=True))
        batch.add_column(sa.Column("stage_timings", sa.Text, nullable=True))
        batch.add_column(sa.Column("outputs", sa.Text, nullable=True))
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_attempt_at", _ts(), nullable=True),
        sa.Column("last_attempt_at", _ts(), nullable=True),
        sa.Column("next_attempt_at", _ts(), nullable=True),
        sa.Column("last_outcome", sa.String(32), nullable=True),
        sa.Column("last_status", sa.Text, nullable=True),
        sa.Column("warning", sa.Text, nullable=True),
        sa.UniqueConstraint("job_id", "destination", name="uq_deliveries_job_destination"),
    )
    op.create_index("ix_deliveries_job", "deliveries", ["job_id"])
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_due", table_name="deliveries")
    op.drop_index("ix_deliveries_job", table_name="deliveries")
    op.drop_table("deliveries")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("outputs")
        batch.drop_column("stage_timings")
        batch.drop_column("detail")
        batch.drop_column("route")
