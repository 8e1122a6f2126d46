"""Deliveries per output kind: a job's SEG, SR, overlay images and RTSTRUCT are sent, fail and are retried
each on their own, so a delivery is one (job, destination, kind); the deliveries made before were of SEG
objects.

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="seg"))
        batch.drop_constraint("uq_deliveries_job_destination", type_="unique")
        batch.create_unique_constraint(
            "uq_deliveries_job_destination_kind", ["job_id", "destination", "kind"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE kind <> 'seg'")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_deliveries_job_destination_kind", type_="unique")
        batch.create_unique_constraint("uq_deliveries_job_destination", ["job_id", "destination"])
        batch.drop_column("kind")
