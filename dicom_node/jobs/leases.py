"""Cluster mode: which worker holds a job's stage (a lease it renews), and which jobs need a task.

The database is the truth of a job; the broker carries only ``(stage, job id)``. A worker that takes a
task **claims** the stage: in one transaction (row lock) it checks that the job is in that stage and that
no live worker holds it, then writes its ``host:pid`` and a lease expiry on the job and a ``stage_claimed``
audit event. A task whose stage is already committed (a redelivery), whose job ended, or whose stage another
live worker holds, does nothing but record a ``task_skipped`` event. The worker renews the lease every
heartbeat while it works; committing the stage's result (:meth:`JobStore.transition` with ``holder``) ends
the lease, conditional on still holding it, so a stage's result is recorded once.

The receivers' dispatcher (:mod:`dicom_node.cluster.dispatch`) asks :meth:`JobLeases.take_due` which jobs
need a task: a new or retried job (``dispatched_at`` unset), a job whose worker's lease expired
(:meth:`JobLeases.interrupt_expired`: ``job_interrupted``, reason ``worker_lost``), or a task dispatched
``cluster.reconcile_after_s`` ago that no worker holds while the broker's queue of its stage is empty (the
broker lost it: ``task_lost``). A task waiting in its queue, however long (a busy GPU worker, no worker
started yet), is never sent twice: the broker's count of waiting tasks decides, not the age alone. Rows are
locked with ``FOR UPDATE SKIP LOCKED``, so two receivers never dispatch the same job twice at once. This
module decides; the writes to the job rows (state, lease, dispatch time) are
:class:`~dicom_node.jobs.store.JobStore`'s, the one writer of job rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.audit.tables import Delivery, Event, Job
from dicom_node.jobs.store import JobInfo, JobState, JobStore
from dicom_node.outputs.outbox import PENDING

S = JobState
#: The states that wait for (or are in) a stage's task, and the stage (queue) that serves each.
STAGE_OF_STATE: dict[JobState, str] = {
    S.queued: "convert",
    S.converting: "convert",
    S.segmenting: "segment",
    S.encoding: "encode",
    S.sending: "send",
}
#: The states in which a task of each stage may claim the job.
STATES_OF_STAGE: dict[str, tuple[JobState, ...]] = {
    "convert": (S.queued, S.converting),
    "segment": (S.segmenting,),
    "encode": (S.encoding,),
    "send": (S.sending,),
}
_ORDER = {S.queued: 0, S.converting: 1, S.segmenting: 2, S.encoding: 3, S.sending: 4, S.done: 5}
_ENDED = (S.failed, S.cancelled, S.superseded)
#: At most this many jobs are dispatched per look (the next look takes the rest).
DISPATCH_BATCH = 200


@dataclass(frozen=True)
class Claim:
    """The outcome of a task's claim: the job with the lease (``refused`` None), or why the task does
    nothing (``stage_committed``, ``job_ended``, ``stage_held``, ``stage_not_reached``, ``job_missing``)."""

    job: JobInfo | None
    refused: str | None
    detail: str
    #: How many times this stage of the job has been claimed, this claim included.
    attempt: int = 0


def _refusal(job: Job, stage: str, worker: str, now: datetime) -> tuple[str, str] | None:
    state = JobState(job.state)
    states = STATES_OF_STAGE[stage]
    if state in states:
        live = job.lease_expires_at is not None and job.lease_expires_at > now
        if live and job.worker != worker:
            return "stage_held", f"worker {job.worker} holds it until {job.lease_expires_at:%H:%M:%S}"
        return None
    if state in _ENDED:
        return "job_ended", f"the job is {state}"
    if _ORDER.get(state, 0) > _ORDER[states[-1]]:
        return "stage_committed", f"its result is committed (the job is {state}): a redelivered task"
    return "stage_not_reached", f"the job is still {state}"


class JobLeases:
    """Lease and dispatch writes of the cluster mode (see the module docstring)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.audit = store.audit
        self.db = store.db

    def _event(self, session: Session, job: Job, what: str, outcome: str, reason: str, detail: str) -> None:
        self.audit.add_event(
            session,
            what,
            outcome,
            reason,
            job_id=job.id,
            study=job.study_instance_uid,
            series=job.series_instance_uid,
            detail=detail[:4000],
        )

    def claim(self, job_id: int, stage: str, worker: str, lease_s: float) -> Claim:
        """Take the lease on ``stage`` of a job for ``worker`` (a queued job moves to converting)."""
        now = self.audit.clock()
        with self.db.write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                return Claim(None, "job_missing", f"job {job_id} does not exist")
            refusal = _refusal(job, stage, worker, now)
            if refusal is not None:
                code, why = refusal
                detail = f"{stage} task of job {job_id} on worker {worker} does nothing: {why}"
                self._event(session, job, "task_skipped", "info", code, detail)
                return Claim(JobInfo.of(job), code, detail)
            if job.lease_expires_at is not None and job.worker not in (None, worker):
                self._interrupted(session, job)
            if job.state == S.queued.value:
                self.store.move_in(session, job, S.converting)
            attempt = 1 + int(
                session.scalar(
                    select(func.count())
                    .select_from(Event)
                    .where(Event.job_id == job_id, Event.what == "stage_claimed", Event.reason == stage)
                )
                or 0
            )
            self.store.take_lease(job, worker, now + timedelta(seconds=lease_s))
            detail = f"worker {worker} took {job.state} (attempt {attempt})"
            self._event(session, job, "stage_claimed", "success", stage, detail)
            return Claim(JobInfo.of(job), None, detail, attempt)

    def _interrupted(self, session: Session, job: Job) -> None:
        """Record that the worker holding the job's stage stopped renewing its lease."""
        expired = job.lease_expires_at
        when = f"{expired:%Y-%m-%d %H:%M:%S} UTC" if expired is not None else "?"
        detail = (
            f"worker {job.worker} stopped renewing its lease on {job.state} (expired {when}): it was killed "
            "or lost its machine; the stage runs again"
        )
        self._event(session, job, "job_interrupted", "failure", "worker_lost", detail)
        self.store.drop_lease(job)

    def renew(self, job_id: int, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease; False when it no longer holds the job's stage."""
        return self.store.renew_lease(job_id, worker, self.audit.clock() + timedelta(seconds=lease_s))

    def release(self, job_id: int, worker: str) -> None:
        """End ``worker``'s lease without a transition (a sending stage waiting for its next attempt); the
        dispatcher hands the stage out again when it is due."""
        self.store.end_lease(job_id, worker)

    def set_dispatched(self, job_id: int, dispatched: bool) -> None:
        """Record that the job's task was handed to the broker now, or (False) that it could not be."""
        self.store.set_dispatched(job_id, self.audit.clock() if dispatched else None)

    def interrupt_expired(self) -> list[int]:
        """Jobs whose worker's lease expired: ``job_interrupted`` (reason ``worker_lost``), to be dispatched
        again. Returns their ids."""
        now = self.audit.clock()
        with self.db.write() as session:
            rows = list(
                session.scalars(
                    select(Job)
                    .where(
                        Job.state.in_([s.value for s in STAGE_OF_STATE]),
                        Job.lease_expires_at.is_not(None),
                        Job.lease_expires_at < now,
                    )
                    .order_by(Job.id)
                    .with_for_update(skip_locked=True)
                )
            )
            for job in rows:
                self._interrupted(session, job)
            return [job.id for job in rows]

    def take_due(
        self, reconcile_after_s: float, waiting: Callable[[str], int | None]
    ) -> list[tuple[int, str]]:
        """Jobs that need a task now, as ``(job id, stage)``, marked dispatched (see the module docstring).

        ``waiting(stage)`` is the broker's count of the tasks waiting in the queue of ``stage`` (None when it
        does not answer); it is asked only about a stage with a task older than ``reconcile_after_s``."""
        now = self.audit.clock()
        lost_before = now - timedelta(seconds=reconcile_after_s)
        out: list[tuple[int, str]] = []
        queue_empty: dict[str, bool] = {}
        with self.db.write() as session:
            rows = session.scalars(
                select(Job)
                .where(
                    Job.state.in_([s.value for s in STAGE_OF_STATE]),
                    Job.lease_expires_at.is_(None),
                    (Job.dispatched_at.is_(None)) | (Job.dispatched_at < lost_before),
                )
                .order_by(Job.id)
                .limit(DISPATCH_BATCH)
                .with_for_update(skip_locked=True)
            )
            sendable = _sendable(session, now)
            for job in rows:
                stage = STAGE_OF_STATE[JobState(job.state)]
                if job.state == S.sending.value and job.id not in sendable:
                    continue  # its next delivery attempt is not due yet
                if job.dispatched_at is not None:
                    if stage not in queue_empty:
                        queue_empty[stage] = waiting(stage) == 0
                    if not queue_empty[stage]:
                        continue  # its task waits in the queue (or the broker cannot tell)
                    detail = (
                        f"no worker took the {stage} task dispatched at {job.dispatched_at:%H:%M:%S} UTC "
                        f"within cluster.reconcile_after_s ({reconcile_after_s:g} s) and the broker's "
                        f"{stage} queue holds no task (the broker lost it); dispatched again"
                    )
                    self._event(session, job, "task_lost", "info", "task_lost", detail)
                self.store.mark_dispatched(job, now)
                out.append((job.id, stage))
        return out


def _sendable(session: Session, now: datetime) -> set[int]:
    """Jobs in ``sending`` with a delivery due now, or with none pending (to be settled)."""
    sending = set(session.scalars(select(Job.id).where(Job.state == S.sending.value)))
    if not sending:
        return set()
    pending: dict[int, bool] = {}
    for job_id, next_at in session.execute(
        select(Delivery.job_id, Delivery.next_attempt_at).where(
            Delivery.state == PENDING, Delivery.job_id.in_(sending)
        )
    ):
        pending[job_id] = pending.get(job_id, False) or next_at is None or next_at <= now
    return {job_id for job_id in sending if pending.get(job_id, True)}
