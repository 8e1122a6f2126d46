"""Read-only queries of a node's audit database (``NodeService.db``, ``SegNode.db``, ...), and waits for a
job to exist or reach a state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, inspect, select

from dicom_node.audit.database import Database
from dicom_node.audit.tables import Delivery, Event, Instance, Job
from dicom_node.jobs.store import JobState
from tests.support.waiting import wait_until

RowT = TypeVar("RowT")


def rows(db: Database, table: type[RowT], *where: Any) -> list[RowT]:
    """Rows of ``table`` matching every ``where`` clause, in primary-key order."""
    with db.read() as session:
        return list(session.scalars(select(table).where(*where).order_by(*inspect(table).primary_key)))


def count(db: Database, table: type[Any], *where: Any) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def events(
    db: Database, what: str | None = None, *, job_id: int | None = None, series_uid: str | None = None
) -> list[Event]:
    """Audit events in order, optionally of one kind (``what``), one job or one series."""
    where = []
    if what is not None:
        where.append(Event.what == what)
    if job_id is not None:
        where.append(Event.job_id == job_id)
    if series_uid is not None:
        where.append(Event.series_instance_uid == series_uid)
    return rows(db, Event, *where)


def transitions(db: Database, *, job_id: int | None = None, series_uid: str | None = None) -> list[str]:
    """The job's state changes in order, as ``"from -> to"``."""
    found = events(db, "job_transition", job_id=job_id, series_uid=series_uid)
    return [str(e.detail).split(":")[0] for e in found]


def jobs(db: Database, series_uid: str | None = None) -> list[Job]:
    """Jobs in id order, optionally of one series."""
    return rows(db, Job, *([Job.series_instance_uid == series_uid] if series_uid else []))


def job(db: Database, job_id: int) -> Job:
    with db.read() as session:
        return session.get_one(Job, job_id)


def deliveries(db: Database, job_id: int) -> list[Delivery]:
    return rows(db, Delivery, Delivery.job_id == job_id)


def job_json(db: Database, job_id: int, column: str) -> dict[str, Any]:
    """A JSON column of a job row (``outputs``, ``stage_timings``) as a dict ({} when empty)."""
    raw = getattr(job(db, job_id), column)
    data: dict[str, Any] = json.loads(raw) if raw else {}
    return data


def spooled(db: Database, spool: Path, sop_uids: list[str]) -> dict[str, bool]:
    """For each SOP Instance UID: recorded in the audit database with a spool file of the recorded SHA-256."""
    recorded = {r.sop_instance_uid: r for r in rows(db, Instance, Instance.sop_instance_uid.in_(sop_uids))}
    found = {}
    for uid in sop_uids:
        row = recorded.get(uid)
        path = spool / row.spool_path if row is not None else None
        found[uid] = bool(
            row is not None
            and path is not None
            and path.is_file()
            and hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        )
    return found


def wait_for_job(db: Database, series_uid: str, timeout_s: float, details: Callable[[], str]) -> int:
    """The id of the series' latest job, once there is one (``details``: what a timeout shows)."""

    def latest() -> int | None:
        found = jobs(db, series_uid)
        return found[-1].id if found else None

    job_id: int = wait_until(latest, timeout_s, f"a job for series {series_uid}", details=details)
    return job_id


def wait_for_state(
    db: Database, job_id: int, states: set[JobState], timeout_s: float, details: Callable[[], str]
) -> JobState:
    """Wait until the job is in one of ``states``; a job that fails on the way fails the wait at once
    (unless ``failed`` is awaited) with its stage and reason."""

    def reached() -> JobState | None:
        row = job(db, job_id)
        current = JobState(row.state)
        if current is JobState.failed and JobState.failed not in states:
            raise AssertionError(f"job {job_id} failed at {row.failed_stage}: [{row.reason}] {row.detail}")
        return current if current in states else None

    names = sorted(s.value for s in states)
    state: JobState = wait_until(reached, timeout_s, f"job {job_id} in {names}", details=details)
    return state
