"""Retention and the resumption of jobs after a full disk, once per cluster: every receiver runs the
housekeeping timer, and the one that holds the cluster-wide advisory lock (PostgreSQL) does the sweep."""

from __future__ import annotations

import logging

from dicom_node.jobs.retention import Housekeeping

LOG = logging.getLogger(__name__)

#: The advisory lock of the housekeeping sweep ('SEGH' in ASCII).
HOUSEKEEPING_LOCK_KEY = 0x53454748


class ClusterHousekeeping(Housekeeping):
    """:class:`Housekeeping` whose sweep runs in one receiver at a time."""

    def run_once(self) -> None:
        with self.ctx.db.exclusive(HOUSEKEEPING_LOCK_KEY) as mine:
            if not mine:
                LOG.debug("another receiver sweeps now")
                return
            super().run_once()
