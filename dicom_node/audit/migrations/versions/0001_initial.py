"""The first audit schema: associations, series, instances, jobs, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _create_associations() -> None:
    """DICOM associations received."""
    op.create_table(
        "associations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("called_ae_title", sa.String(16), nullable=False),
        sa.Column("peer_address", sa.String(255), nullable=False),
        sa.Column("peer_port", sa.Integer, nullable=False),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("ended_at", _ts(), nullable=True),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("instances_received", sa.Integer, nullable=False),
        sa.Column("bytes_received", sa.BigInteger, nullable=False),
    )


def _create_series() -> None:
    """Series received, with their completion state."""
    op.create_table(
        "series",
        sa.Column("series_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("patient_name", sa.String(324), nullable=True),
        sa.Column("patient_birth_date", sa.String(8), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("expected_count", sa.Integer, nullable=True),
        sa.Column("first_received_at", _ts(), nullable=False),
        sa.Column("last_received_at", _ts(), nullable=False),
        sa.Column("completed_at", _ts(), nullable=True),
        sa.Column("completed_by", sa.String(32), nullable=True),
    )
    op.create_index("ix_series_study_instance_uid", "series", ["study_instance_uid"])


def _create_instances() -> None:
    """Instances received, with their spool file."""
    op.create_table(
        "instances",
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column(
            "series_instance_uid",
            sa.String(64),
            sa.ForeignKey("series.series_instance_uid"),
            nullable=False,
        ),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("spool_path", sa.String(255), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("association_id", sa.Integer, sa.ForeignKey("associations.id"), nullable=True),
        sa.Column("times_received", sa.Integer, nullable=False),
    )


def _create_jobs() -> None:
    """Jobs: one per series run through the pipeline."""
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "series_instance_uid",
            sa.String(64),
            sa.ForeignKey("series.series_instance_uid"),
            nullable=False,
        ),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failed_stage", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(255), nullable=True),
        sa.Column("superseded_by", sa.Integer, sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
    )


def _create_events() -> None:
    """The append-only audit event log."""
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("what", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("association_id", sa.Integer, nullable=True),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("calling_ae_title", sa.String(16), nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )


def upgrade() -> None:
    _create_associations()
    _create_series()
    _create_instances()
    _create_jobs()
    _create_events()


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("jobs")
    op.drop_table("instances")
    op.drop_index("ix_series_study_instance_uid", table_name="series")
    op.drop_table("series")
    op.drop_table("associations")
