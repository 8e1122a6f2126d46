"""The receiver's dispatcher and reconciler: every job that needs a task gets one on the broker.

Each look (``cluster.dispatch_interval_s``, or at once when woken):

1. jobs whose worker's lease expired are recorded as interrupted (``job_interrupted``, ``worker_lost``);
2. jobs that need a task are marked dispatched and their task is published: new jobs, jobs retried or
   resent by an operator, a stage whose worker was lost, a sending stage whose next attempt is due, a task
   the broker lost (older than ``cluster.reconcile_after_s``, no worker holds it and the broker's queue of
   its stage is empty: :meth:`Publisher.waiting`); see :meth:`dicom_node.jobs.leases.JobLeases.take_due`.

A publish the broker refuses (it is down) is undone in the database and tried again at the next look;
receiving goes on meanwhile, since the SCP and series completion only need the database. Several receivers
may run a dispatcher each: the row locks make each task go out once.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from config.cluster import ClusterConfig
from dicom_node.cluster.app import BrokerUnavailableError, Publisher
from dicom_node.jobs.leases import JobLeases

LOG = logging.getLogger(__name__)


class Dispatcher:
    """The dispatch loop of a receiver (a daemon thread between :meth:`start` and :meth:`stop`)."""

    def __init__(self, leases: JobLeases, cluster: ClusterConfig, publisher: Publisher) -> None:
        self.leases = leases
        self.cluster = cluster
        self.publisher = publisher
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether the last publish failed (the broker is down): logged once per outage.
        self.broker_down = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="segnode-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self.publisher.close()

    def wake(self) -> None:
        """Look for work now (a job was created, retried or resent)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError:
                LOG.exception("dispatcher: database error; trying again at the next look")
            self._wake.wait(self.cluster.dispatch_interval_s)
            self._wake.clear()

    def run_once(self) -> int:
        """One look; returns the number of tasks published."""
        for job_id in self.leases.interrupt_expired():
            LOG.warning("job %d: its worker's lease expired; the stage is dispatched again", job_id)
        published = 0
        due = self.leases.take_due(self.cluster.reconcile_after_s, self.publisher.waiting)
        for index, (job_id, stage) in enumerate(due):
            try:
                self.publisher.publish(stage, job_id)
            except BrokerUnavailableError as exc:
                for undone, _stage in due[index:]:
                    self.leases.set_dispatched(undone, False)
                if not self.broker_down:
                    LOG.error(
                        "%s; receiving goes on, dispatching resumes when the broker is back", exc.message
                    )
                self.broker_down = True
                return published
            published += 1
        if self.broker_down and published:
            LOG.warning("the broker takes tasks again; dispatching resumed")
            self.broker_down = False
        return published
