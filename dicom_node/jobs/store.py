"""Jobs: the persisted state machine of the processing of one completed series.

States and the allowed moves between them are one table (:data:`TRANSITIONS`); every transition is written
with an audit event in the same transaction, so the job's history is in the event log. Non-terminal jobs
are listed by :meth:`JobStore.resumable_jobs` when the node starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from config.errors import SegNodeError
from dicom_node.audit.log import AuditLog
from dicom_node.audit.tables import Job
from dicom_node.http.metrics import NodeMetrics


class JobState(StrEnum):
    """Where a job stands (``Job.state``): waiting, in a stage (the stage whose result is still missing),
    or ended; the moves between them are :data:`TRANSITIONS`."""

    queued = "queued"
    converting = "converting"
    segmenting = "segmenting"
    encoding = "encoding"
    sending = "sending"
    done = "done"
    failed = "failed"
    superseded = "superseded"
    cancelled = "cancelled"


S = JobState
#: The stages a job works through, in order.
STAGES: tuple[JobState, ...] = (S.converting, S.segmenting, S.encoding, S.sending)
_ENDS = {S.failed, S.cancelled, S.superseded}

#: Allowed transitions: each working state moves to the next stage or ends (failed, cancelled,
#: superseded); a working state may go back to queued when the node restarts mid-stage; a failed job may
#: be queued again or resume at a stage (retry), or be cancelled by an operator who gives it up; a done job
#: may be sent again (resend); a done or failed job may be superseded by the job of a re-opened series.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.queued: frozenset({S.converting} | _ENDS),
    S.converting: frozenset({S.segmenting, S.queued} | _ENDS),
    S.segmenting: frozenset({S.encoding, S.queued} | _ENDS),
    S.encoding: frozenset({S.sending, S.queued} | _ENDS),
    S.sending: frozenset({S.done, S.queued} | _ENDS),
    S.done: frozenset({S.superseded, S.sending}),
    S.failed: frozenset({S.queued, S.superseded, S.cancelled, *STAGES}),
    S.superseded: frozenset(),
    S.cancelled: frozenset(),
}
RESUMABLE: frozenset[JobState] = frozenset({S.queued, *STAGES})

LOG = logging.getLogger(__name__)


class JobNotFoundError(SegNodeError):
    """No job has the id asked for."""

    reason = "job_not_found"


class IllegalTransitionError(SegNodeError):
    """:data:`TRANSITIONS` forbids the move asked for (or a reason required for it is missing)."""

    reason = "illegal_transition"


class LeaseLostError(IllegalTransitionError):
    """Cluster mode: the worker no longer holds the job's stage (its lease expired and the stage went to
    another worker, or an operator moved the job); its result is not recorded."""

    reason = "lease_lost"


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A read-only snapshot of a job row."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    state: JobState
    failed_stage: JobState | None
    reason: str | None
    superseded_by: int | None
    created_at: datetime
    updated_at: datetime
    #: The routing rule whose action the job carries out (``None`` until the job is routed).
    route: str | None = None

    @classmethod
    def of(cls, row: Job) -> JobInfo:
        """The snapshot of a job row."""
        return cls(
            id=row.id,
            series_instance_uid=row.series_instance_uid,
            study_instance_uid=row.study_instance_uid,
            state=JobState(row.state),
            failed_stage=JobState(row.failed_stage) if row.failed_stage else None,
            reason=row.reason,
            superseded_by=row.superseded_by,
            route=row.route,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass
class StageTimer:
    """Measures one run of a stage; :meth:`JobStore.record_stage_timing` stores it."""

    stage: str
    started_at: datetime
    start: float
    extra: dict[str, Any] = field(default_factory=dict)


class JobStore:
    """Creates jobs and moves them through :data:`TRANSITIONS`, recording an audit event for each move."""

    def __init__(self, audit: AuditLog, metrics: NodeMetrics | None = None) -> None:
        self.audit = audit
        self.db = audit.db
        #: Counts the jobs that end failed (``/metrics``).
        self.metrics = metrics or NodeMetrics()

    def create(self, series_instance_uid: str, study_instance_uid: str, reason: str) -> JobInfo:
        """Create a ``queued`` job for a completed series; earlier jobs of the series are superseded."""
        with self.db.write() as session:
            return self.create_in(session, series_instance_uid, study_instance_uid, reason)

    def create_in(
        self, session: Session, series_instance_uid: str, study_instance_uid: str, reason: str
    ) -> JobInfo:
        """As :meth:`create`, inside the caller's transaction (the series completion commits both)."""
        now = self.audit.clock()
        job = self._add_queued(session, series_instance_uid, study_instance_uid, None, reason, now)
        older = session.scalars(
            select(Job).where(
                Job.series_instance_uid == series_instance_uid,
                Job.id != job.id,
                Job.state.not_in([S.superseded.value, S.cancelled.value]),
            )
        )
        for old in older:
            previous = old.state
            old.state = S.superseded.value
            old.superseded_by = job.id
            old.reason = f"superseded by job {job.id}"
            old.updated_at = now
            self.audit.add_event(
                session,
                "job_superseded",
                "info",
                f"series re-opened by a late instance; superseded by job {job.id}",
                job_id=old.id,
                study=study_instance_uid,
                series=series_instance_uid,
                detail=f"{previous} -> superseded",
            )
        LOG.info("job %d queued for series %s", job.id, series_instance_uid)
        return JobInfo.of(job)

    def _add_queued(
        self,
        session: Session,
        series_instance_uid: str,
        study_instance_uid: str,
        route: str | None,
        reason: str,
        now: datetime,
    ) -> Job:
        """A new ``queued`` job row and its ``job_created`` event (in the caller's transaction)."""
        job = Job(
            series_instance_uid=series_instance_uid,
            study_instance_uid=study_instance_uid,
            state=S.queued.value,
            route=route,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        self.audit.add_event(
            session,
            "job_created",
            "success",
            reason,
            job_id=job.id,
            study=study_instance_uid,
            series=series_instance_uid,
            detail="state queued",
        )
        return job

    def transition(
        self,
        job_id: int,
        new_state: JobState,
        reason: str | None = None,
        detail: str | None = None,
        *,
        holder: str | None = None,
        dispatched: bool = False,
    ) -> JobInfo:
        """Move a job to ``new_state``; :class:`IllegalTransitionError` when the table forbids it.

        Moving to ``failed`` records the stage the job was in as ``failed_stage``; ``reason`` is the stable
        reason code (required for ``failed`` and ``cancelled``); ``detail`` (the failure message) is kept
        on the job and added to the audit event.

        Cluster mode: a transition ends the lease on the stage; ``holder`` (a worker's ``host:pid``) makes
        it conditional on that worker still holding the lease (:class:`LeaseLostError` otherwise);
        ``dispatched`` records that the caller hands the new state's task to the broker now (otherwise the
        receivers' dispatcher does).
        """
        new_state = JobState(new_state)
        if new_state in {S.failed, S.cancelled} and not reason:
            raise IllegalTransitionError(f"job {job_id}: a reason is required to move to {new_state}")
        with self.db.write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFoundError(f"job {job_id} does not exist")
            current = JobState(job.state)
            if holder is not None and (job.worker != holder or job.lease_expires_at is None):
                raise LeaseLostError(
                    f"job {job_id}: worker {holder} no longer holds {current} (held by {job.worker})"
                )
            self.move_in(session, job, new_state, reason, detail, dispatched=dispatched)
            info = JobInfo.of(job)
        if new_state is S.failed:
            self.metrics.job_failed(current.value, reason)
        return info

    def move_in(
        self,
        session: Session,
        job: Job,
        new_state: JobState,
        reason: str | None = None,
        detail: str | None = None,
        *,
        dispatched: bool = False,
    ) -> None:
        """The transition of :meth:`transition` on a row of the caller's transaction (the cluster's claim of
        a queued job moves it to converting in the transaction that takes the lease)."""
        current = JobState(job.state)
        if new_state not in TRANSITIONS[current]:
            raise IllegalTransitionError(f"job {job.id}: cannot move from {current} to {new_state}")
        job.state = new_state.value
        job.updated_at = self.audit.clock()
        job.lease_expires_at = None
        job.dispatched_at = job.updated_at if dispatched else None
        job.reason = reason
        job.detail = detail
        if new_state is S.failed:
            job.failed_stage = current.value
        elif new_state is S.queued or current is S.failed:
            job.failed_stage = None
        self.audit.add_event(
            session,
            "job_transition",
            "failure" if new_state is S.failed else "success",
            reason,
            job_id=job.id,
            study=job.study_instance_uid,
            series=job.series_instance_uid,
            detail=f"{current} -> {new_state}" + (f": {detail}" if detail else ""),
        )

    def get(self, job_id: int) -> JobInfo:
        """The job's snapshot; :class:`JobNotFoundError` when there is none with that id."""
        with self.db.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFoundError(f"job {job_id} does not exist")
            return JobInfo.of(job)

    def resumable_jobs(self) -> list[JobInfo]:
        """Jobs not in a terminal state, oldest first (what the node resumes after a restart)."""
        with self.db.read() as session:
            rows = session.scalars(
                select(Job).where(Job.state.in_([s.value for s in RESUMABLE])).order_by(Job.id)
            )
            return [JobInfo.of(r) for r in rows]

    # -- cluster leases: who holds a job's stage (decided by dicom_node.jobs.leases) ---------------------

    def take_lease(self, job: Job, worker: str, expires: datetime) -> None:
        """``worker`` holds the stage of ``job`` (a row of the caller's transaction) until ``expires``."""
        job.worker = worker
        job.lease_expires_at = expires

    def drop_lease(self, job: Job) -> None:
        """The lease on the stage of ``job`` (a row of the caller's transaction) ends without a result: the
        stage is to be dispatched again."""
        job.lease_expires_at = None
        job.dispatched_at = None

    def mark_dispatched(self, job: Job, at: datetime | None) -> None:
        """The task of ``job`` (a row of the caller's transaction) went to the broker ``at`` (None: not)."""
        job.dispatched_at = at

    def renew_lease(self, job_id: int, worker: str, expires: datetime) -> bool:
        """Extend ``worker``'s lease to ``expires``; False when it no longer holds the job's stage."""
        with self.db.write() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.lease_expires_at.is_not(None))
                .values(lease_expires_at=expires)
            )
            return bool(getattr(result, "rowcount", 0))

    def end_lease(self, job_id: int, worker: str) -> None:
        """End ``worker``'s lease on the job's stage, if it still holds it, without a transition."""
        with self.db.write() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.worker == worker, Job.lease_expires_at.is_not(None))
                .values(lease_expires_at=None, dispatched_at=None)
            )

    def set_dispatched(self, job_id: int, at: datetime | None) -> None:
        """As :meth:`mark_dispatched`, in a transaction of its own."""
        with self.db.write() as session:
            session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=at))

    # -- results and timings of the stages -----------------------------------------------------------------

    def outputs(self, job_id: int) -> dict[str, Any]:
        """The job's ``outputs`` JSON (label maps, SEG objects) as a dict; empty before the first stage."""
        with self.db.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise JobNotFoundError(f"job {job_id} does not exist")
            data: dict[str, Any] = json.loads(job.outputs) if job.outputs else {}
            return data

    def set_output(self, job_id: int, key: str, value: Any) -> None:
        """Set ``Job.outputs[key]`` (one transaction)."""
        with self.db.write() as session:
            job = session.get_one(Job, job_id)
            data = json.loads(job.outputs) if job.outputs else {}
            data[key] = value
            job.outputs = json.dumps(data, sort_keys=True)

    @contextmanager
    def timed_stage(self, job_id: int, stage: str) -> Iterator[StageTimer]:
        """Time the body and store the stage's start, end and duration on the job (also when it fails)."""
        timer = StageTimer(stage, self.audit.clock(), time.perf_counter())
        ok = False
        try:
            yield timer
            ok = True
        finally:
            seconds = time.perf_counter() - timer.start
            self.record_stage_timing(job_id, timer, seconds, ok)

    def record_stage_timing(
        self, job_id: int, timer: StageTimer, seconds: float, ok: bool, ended_at: datetime | None = None
    ) -> None:
        """Store one run of a stage in ``Job.stage_timings`` (the latest run per stage, and every run)."""
        entry: dict[str, Any] = {
            "started_at": timer.started_at.isoformat(),
            "ended_at": (ended_at or self.audit.clock()).isoformat(),
            "seconds": round(seconds, 4),
            "ok": ok,
        }
        entry.update(timer.extra)
        with self.db.write() as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            timings = json.loads(job.stage_timings) if job.stage_timings else {}
            runs = timings.setdefault("runs", [])
            runs.append({"stage": timer.stage, **entry})
            timings[timer.stage] = entry
            job.stage_timings = json.dumps(timings, sort_keys=True)
        self.metrics.stage_finished(timer.stage, seconds)

    def fail(self, job_id: int, exc: BaseException, holder: str | None = None) -> JobInfo:
        """Move a job to ``failed`` with the error's reason code (``internal_error`` for an error that is not
        a :class:`SegNodeError`) and message (``holder``: see :meth:`transition`)."""
        reason = exc.reason if isinstance(exc, SegNodeError) else "internal_error"
        message = exc.message if isinstance(exc, SegNodeError) else f"{type(exc).__name__}: {exc}"
        LOG.warning("job %d failed: [%s] %s", job_id, reason, message)
        return self.transition(job_id, S.failed, reason=reason, detail=message[:2000], holder=holder)

    def record_route(self, job_id: int, rule: str, fan_out: Sequence[str], detail: str) -> list[int]:
        """Store the routing decision of a job: it carries out ``rule``; each rule of ``fan_out`` gets a new
        ``queued`` job of the same series (one transaction, with ``job_routed`` / ``job_created`` events).
        Returns the ids of the new jobs."""
        created: list[int] = []
        with self.db.write() as session:
            row = session.get_one(Job, job_id)
            row.route = rule
            self.audit.add_event(
                session,
                "job_routed",
                "success",
                rule,
                job_id=row.id,
                study=row.study_instance_uid,
                series=row.series_instance_uid,
                detail=detail[:4000],
            )
            for extra in fan_out:
                sibling = self._add_queued(
                    session,
                    row.series_instance_uid,
                    row.study_instance_uid,
                    extra,
                    f"fan-out of job {row.id} to route {extra}",
                    self.audit.clock(),
                )
                created.append(sibling.id)
        return created
