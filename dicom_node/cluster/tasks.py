"""What a worker does with a task: claim the stage, run it, commit its result, hand the job on.

The stages are the embedded node's functions (``convert_stage``, ``segment_stage``, ``encode_stage``,
``attempt_delivery``/``settle_job``); what differs is how the next stage gets the job: the volumes are
rebuilt from the shared spool by the stage that needs them (``reload_volumes``), the label maps and SEG
objects lie in the shared work and outbox folders, and the next stage's task is published once the
transition that commits this stage's result is in the database. The task returns (and Celery acknowledges
it) only after that commit, so a worker that dies mid-stage leaves the task to be delivered again or the
lease to expire; a task delivered again for a committed stage does nothing (:class:`JobLeases.claim`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError

from config.cluster import ClusterConfig
from config.errors import SegNodeError
from dicom_node.cluster.app import BrokerUnavailableError, Publisher
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.convert import convert_stage, reload_volumes
from dicom_node.jobs.leases import JobLeases
from dicom_node.jobs.segment import EngineLike, segment_stage
from dicom_node.jobs.store import IllegalTransitionError, JobState, LeaseLostError
from dicom_node.logs import job_context
from dicom_node.outputs.encode import encode_stage
from dicom_node.outputs.outbox import PENDING, attempt_delivery, deliveries_of, open_deliveries, settle_job

LOG = logging.getLogger(__name__)
#: The state a job is in while each stage's task works on it (the failpoints are named by state).
_WORKING_STATE = {"convert": "converting", "segment": "segmenting", "encode": "encoding", "send": "sending"}


class Heartbeat:
    """Renews the leases of the jobs this worker holds every ``cluster.heartbeat_s`` (a daemon thread)."""

    def __init__(self, leases: JobLeases, worker: str, cluster: ClusterConfig) -> None:
        self.leases = leases
        self.worker = worker
        self.cluster = cluster
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="segnode-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def hold(self, job_id: int) -> None:
        with self._lock:
            self._held.add(job_id)

    def drop(self, job_id: int) -> None:
        with self._lock:
            self._held.discard(job_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.cluster.heartbeat_s):
            with self._lock:
                held = sorted(self._held)
            for job_id in held:
                try:
                    if not self.leases.renew(job_id, self.worker, self.cluster.lease_s):
                        LOG.warning("job %d: this worker no longer holds its stage (lease lost)", job_id)
                except SQLAlchemyError:
                    LOG.exception("job %d: the lease could not be renewed (database error)", job_id)


class StageRunner:
    """Runs the tasks of one worker process (``identity``: its ``host:pid``)."""

    def __init__(
        self,
        ctx: PipelineContext,
        cluster: ClusterConfig,
        publisher: Publisher,
        identity: str,
        engine: Callable[[], EngineLike],
        after_commit: Callable[[str, int], None] = lambda stage, job_id: None,
    ) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.publisher = publisher
        self.identity = identity
        self.engine = engine
        self.leases = JobLeases(ctx.jobs)
        self.heartbeat = Heartbeat(self.leases, identity, cluster)
        #: Test-only hook between the commit of a stage and the acknowledgement of its task.
        self.after_commit = after_commit
        self._work: dict[str, Callable[[int], str | None]] = {
            "convert": self._convert,
            "segment": self._segment,
            "encode": self._encode,
            "send": self._send,
        }

    def run(self, stage: str, job_id: int) -> str:
        """Run the ``stage`` task of a job; returns what happened (``committed`` or why it did nothing)."""
        with job_context(job_id):
            claim = self.leases.claim(job_id, stage, self.identity, self.cluster.lease_s)
            if claim.refused is not None:
                LOG.info("%s", claim.detail)
                return claim.refused
            LOG.info("job %d: %s", job_id, claim.detail)
            self.heartbeat.hold(job_id)
            outcome, next_stage = "failed", None
            try:
                next_stage = self._work[stage](job_id)
                outcome = "committed"
            except LeaseLostError as exc:
                LOG.warning("job %d: result of %s not recorded: %s", job_id, stage, exc.message)
            except IllegalTransitionError as exc:
                LOG.info("job %d changed meanwhile (cancelled or superseded): %s", job_id, exc.message)
            except SQLAlchemyError:
                LOG.exception(
                    "job %d: database error in %s; the stage runs again after the lease", job_id, stage
                )
            except SegNodeError as exc:
                self._fail(job_id, exc)
            except Exception as exc:  # an unexpected error fails the job with its message, not the worker
                LOG.exception("job %d: unexpected error in %s", job_id, stage)
                self._fail(job_id, exc)
            finally:
                self.heartbeat.drop(job_id)
            if next_stage is not None:
                self._hand_on(next_stage, job_id)
            self.after_commit(_WORKING_STATE[stage], job_id)
            return outcome

    def _fail(self, job_id: int, exc: BaseException) -> None:
        try:
            self.ctx.jobs.fail(job_id, exc, holder=self.identity)
        except IllegalTransitionError as again:
            LOG.info("job %d not failed, it changed meanwhile: %s", job_id, again)

    def _hand_on(self, stage: str, job_id: int) -> None:
        """Publish the next stage's task (already marked dispatched with the commit)."""
        try:
            self.publisher.publish(stage, job_id)
        except BrokerUnavailableError as exc:
            LOG.warning("%s; a receiver dispatches it when the broker is back", exc.message)
            self.leases.set_dispatched(job_id, False)

    def _convert(self, job_id: int) -> str | None:
        with self.ctx.jobs.timed_stage(job_id, "converting") as timer:
            timer.extra["worker"] = self.identity
            converted = convert_stage(self.ctx, job_id)
            if converted is not None:
                timer.extra["stacks"] = len(converted.volumes)
                timer.extra["route"] = converted.plan.route
        if converted is None:  # the route ignores the series: the job is cancelled
            return None
        self.ctx.jobs.transition(job_id, JobState.segmenting, holder=self.identity, dispatched=True)
        return "segment"

    def _segment(self, job_id: int) -> str | None:
        converted = reload_volumes(self.ctx, job_id)
        with self.ctx.jobs.timed_stage(job_id, "segmenting") as timer:
            timer.extra["worker"] = self.identity
            records = segment_stage(self.ctx, converted, self.engine())
            timer.extra["inference_s"] = round(sum(r.timings.get("total", 0.0) for r in records), 4)
            timer.extra["device"] = ", ".join(sorted({r.device for r in records}))
        self.ctx.jobs.transition(job_id, JobState.encoding, holder=self.identity, dispatched=True)
        return "encode"

    def _encode(self, job_id: int) -> str | None:
        converted = reload_volumes(self.ctx, job_id)
        with self.ctx.jobs.timed_stage(job_id, "encoding") as timer:
            timer.extra["worker"] = self.identity
            outputs = encode_stage(self.ctx, converted)
            timer.extra["seg_objects"] = len(outputs)
            timer.extra["validation_s"] = round(sum(o.validation_s for o in outputs), 4)
        names = open_deliveries(self.ctx, job_id, outputs, holder=self.identity, dispatched=True)
        return "send" if names else None

    def _send(self, job_id: int) -> str | None:
        now = self.ctx.now()
        for delivery in deliveries_of(self.ctx, job_id):
            if delivery.state == PENDING and _due(delivery.next_attempt_at, now):
                attempt_delivery(self.ctx, delivery.id)
        if settle_job(self.ctx, job_id) is None:  # a delivery waits for its next attempt
            self.leases.release(job_id, self.identity)
        return None


def _due(next_attempt_at: datetime | None, now: datetime) -> bool:
    return next_attempt_at is None or next_attempt_at <= now
