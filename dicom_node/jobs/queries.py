"""What an operator looks at: jobs with their stages and deliveries, associations, series, destinations.

Read-only queries shared by ``segnode jobs`` and the HTTP API/dashboard (one implementation each). Results
are plain dictionaries of JSON-friendly values (datetimes stay datetimes; the callers format them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from config.errors import SegNodeError
from config.model import SegNodeConfig
from dicom_node.audit.database import Database
from dicom_node.audit.query import PATIENT_COLUMNS
from dicom_node.audit.tables import Association, Delivery, Event, Job, Series, SeriesState
from dicom_node.jobs.store import JobInfo, JobNotFoundError, JobState

#: The stages shown in a job's timing columns, in order.
TIMED_STAGES: tuple[str, ...] = ("converting", "segmenting", "encoding", "sending")
#: Work states in the order a job goes through them (the queue depth of each).
WORK_STATES: tuple[str, ...] = ("queued", "converting", "segmenting", "encoding", "sending")


@dataclass(frozen=True)
class JobFilter:
    """Which jobs to list; ``None`` means no condition."""

    state: str | None = None
    series: str | None = None
    study: str | None = None
    route: str | None = None
    reason: str | None = None
    failed_stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    offset: int = 0


def _timings(raw: str | None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw) if raw else {}
    return data


def job_row(row: Job) -> dict[str, Any]:
    """The job's snapshot (:class:`JobInfo`) with what an operator also reads: the failure's detail and the
    seconds of each stage that ran."""
    timings = _timings(row.stage_timings)
    return {
        **asdict(JobInfo.of(row)),
        "detail": row.detail,
        "stage_seconds": {
            stage: timings[stage]["seconds"]
            for stage in TIMED_STAGES
            if isinstance(timings.get(stage), dict) and "seconds" in timings[stage]
        },
    }


def _job_conditions(f: JobFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if f.state:
        conditions.append(Job.state == JobState(f.state).value)
    if f.failed_stage:
        conditions.append(Job.failed_stage == JobState(f.failed_stage).value)
    for value, column in (
        (f.series, Job.series_instance_uid),
        (f.study, Job.study_instance_uid),
        (f.route, Job.route),
        (f.reason, Job.reason),
    ):
        if value:
            conditions.append(column == value)
    if f.since:
        conditions.append(Job.updated_at >= f.since)
    if f.until:
        conditions.append(Job.updated_at < f.until)
    return conditions


def list_jobs(db: Database, f: JobFilter | None = None) -> list[dict[str, Any]]:
    """Jobs matching ``f``, newest first (``ValueError`` for an unknown state)."""
    f = f or JobFilter()
    statement = (
        select(Job)
        .where(*_job_conditions(f))
        .order_by(Job.id.desc())
        .limit(max(0, f.limit))
        .offset(max(0, f.offset))
    )
    with db.read() as session:
        return [job_row(r) for r in session.scalars(statement)]


def jobs_by_state(db: Database) -> dict[str, int]:
    """How many jobs are in each state (every state listed, zeros included)."""
    counts = {state.value: 0 for state in JobState}
    with db.read() as session:
        for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)):
            counts[str(state)] = int(count)
    return counts


def pending_deliveries(db: Database) -> int:
    """Deliveries waiting to be sent (due now or in back-off)."""
    with db.read() as session:
        return int(session.scalar(select(func.count()).where(Delivery.state == "pending")) or 0)


def delivery_row(row: Delivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "destination": row.destination,
        "kind": row.kind,
        "state": row.state,
        "attempts": row.attempts,
        "first_attempt_at": row.first_attempt_at,
        "last_attempt_at": row.last_attempt_at,
        "next_attempt_at": row.next_attempt_at,
        "last_outcome": row.last_outcome,
        "last_status": row.last_status,
        "warning": row.warning,
    }


def event_row(row: Event) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "what": row.what,
        "outcome": row.outcome,
        "reason": row.reason,
        "detail": row.detail,
    }


def show_job(db: Database, job_id: int) -> dict[str, Any]:
    """Everything about a job: its row, every stage run, outputs, deliveries and audit events."""
    with db.read() as session:
        row = session.get(Job, job_id)
        if row is None:
            raise JobNotFoundError(f"job {job_id} does not exist")
        timings = _timings(row.stage_timings)
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id))
        events = session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))
        return {
            **job_row(row),
            # cluster mode: the worker (host:pid) holding the current stage, or the last one that held it
            "worker": row.worker,
            "lease_expires_at": row.lease_expires_at,
            "stage_timings": {k: v for k, v in timings.items() if k != "runs"},
            "stage_runs": timings.get("runs", []),
            "outputs": json.loads(row.outputs) if row.outputs else {},
            "deliveries": [delivery_row(d) for d in deliveries],
            "events": [event_row(e) for e in events],
        }


class NoResultsError(SegNodeError):
    """The job has no measured volumes (yet)."""

    reason = "no_results"


def job_results(db: Database, job_id: int) -> list[dict[str, Any]]:
    """The volume of every structure the job segmented (the rows of
    :func:`dicom_node.outputs.volumetry.result_rows`, stored by the encoding stage), in label order per
    stack; :class:`JobNotFoundError`, or :class:`NoResultsError` saying why there are none."""
    with db.read() as session:
        row = session.get(Job, job_id)
        if row is None:
            raise JobNotFoundError(f"job {job_id} does not exist")
        outputs = json.loads(row.outputs) if row.outputs else {}
        state, failed_stage, reason = row.state, row.failed_stage, row.reason
    rows = outputs.get("volumetry")
    if rows is not None:
        return list(rows)
    if state == JobState.failed.value:
        why = f"it failed while {failed_stage} ({reason}) before its volumes were measured"
    elif state in (JobState.cancelled.value, JobState.superseded.value):
        why = f"it was {state} before its volumes were measured"
    elif state in WORK_STATES:
        why = f"it is {state}; volumes are measured when its label maps are encoded"
    else:
        why = f"it is {state} but no volumes were recorded for it"
    raise NoResultsError(f"job {job_id} has no results: {why}")


def list_associations(
    db: Database,
    since: datetime | None = None,
    ae: str | None = None,
    result: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Associations, newest first."""
    conditions: list[ColumnElement[bool]] = []
    if since:
        conditions.append(Association.started_at >= since)
    if ae:
        conditions.append((Association.calling_ae_title == ae) | (Association.called_ae_title == ae))
    if result:
        conditions.append(Association.result == result)
    statement = select(Association).where(*conditions).order_by(Association.id.desc()).limit(max(0, limit))
    columns = [c.key for c in Association.__table__.columns]
    with db.read() as session:
        return [{c: getattr(r, c) for c in columns} for r in session.scalars(statement)]


def list_series(
    db: Database,
    state: SeriesState | None = None,
    study: str | None = None,
    limit: int = 100,
    patient_data: bool = False,
) -> list[dict[str, Any]]:
    """Series, most recently received first; patient columns only with ``patient_data``."""
    conditions: list[ColumnElement[bool]] = []
    if state:
        conditions.append(Series.state == SeriesState(state).value)
    if study:
        conditions.append(Series.study_instance_uid == study)
    statement = (
        select(Series).where(*conditions).order_by(Series.last_received_at.desc()).limit(max(0, limit))
    )
    columns = [c.key for c in Series.__table__.columns if patient_data or c.key not in PATIENT_COLUMNS]
    with db.read() as session:
        return [{c: getattr(r, c) for c in columns} for r in session.scalars(statement)]


def destinations_overview(
    db: Database, config: SegNodeConfig, health: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each configured destination: where it is, whether it answers (``health``: name -> state), and its
    deliveries: how many wait (and when the next attempt is due: the back-off), how many failed (of jobs
    still failed: a retried or cancelled job's are not counted), the last delivery."""
    with db.read() as session:
        pending = {
            name: (int(count), nxt)
            for name, count, nxt in session.execute(
                select(Delivery.destination, func.count(), func.min(Delivery.next_attempt_at))
                .where(Delivery.state == "pending")
                .group_by(Delivery.destination)
            )
        }
        failed = {
            name: int(count)
            for name, count in session.execute(
                select(Delivery.destination, func.count())
                .join(Job, Job.id == Delivery.job_id)
                .where(Delivery.state == "failed", Job.state == JobState.failed.value)
                .group_by(Delivery.destination)
            )
        }
        delivered = {
            name: last
            for name, last in session.execute(
                select(Delivery.destination, func.max(Delivery.last_attempt_at))
                .where(Delivery.state == "delivered")
                .group_by(Delivery.destination)
            )
        }
        waiting = _waiting_deliveries(session)
    out = []
    for name, destination in config.destinations.items():
        count, next_at = pending.get(name, (0, None))
        out.append(
            {
                "name": name,
                "ae_title": destination.ae_title,
                "host": destination.host,
                "port": destination.port,
                "tls": destination.tls.enabled,
                "health": dict(health.get(name, {"state": "unknown"})),
                "pending_deliveries": count,
                "next_attempt_at": next_at,
                "failed_deliveries": int(failed.get(name, 0)),
                "last_delivered_at": delivered.get(name),
                "waiting": waiting.get(name, []),
            }
        )
    return out


def _waiting_deliveries(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Pending deliveries that already failed at least once (in back-off), per destination (20 at most)."""
    rows = session.scalars(
        select(Delivery)
        .where(Delivery.state == "pending", Delivery.attempts > 0)
        .order_by(Delivery.next_attempt_at)
        .limit(200)
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        items = out.setdefault(row.destination, [])
        if len(items) < 20:
            items.append(delivery_row(row))
    return out
