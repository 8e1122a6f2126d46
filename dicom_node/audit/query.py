"""Search the audit database: events, associations, instances, series and jobs, filtered by time range, AE
title, study/series UID and state. ``segnode audit`` and the HTTP API's ``/api/audit`` both use it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, inspect, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from config.errors import SegNodeError
from dicom_node.audit.database import Database
from dicom_node.audit.tables import Association, Base, Event, Instance, Job, Series

TABLES: dict[str, type[Base]] = {
    "events": Event,
    "associations": Association,
    "instances": Instance,
    "series": Series,
    "jobs": Job,
}
#: The time column each table is filtered and ordered by.
TIME_COLUMN: dict[str, str] = {
    "events": "at",
    "associations": "started_at",
    "instances": "received_at",
    "series": "last_received_at",
    "jobs": "created_at",
}
#: The column ``state`` filters, per table.
STATE_COLUMN: dict[str, str] = {
    "events": "outcome",
    "associations": "result",
    "series": "state",
    "jobs": "state",
}
#: Columns that hold patient data (shown only where the configuration allows it).
PATIENT_COLUMNS = frozenset({"patient_id", "patient_name", "patient_birth_date"})


class AuditQueryError(SegNodeError):
    reason = "invalid_audit_query"


@dataclass(frozen=True)
class AuditFilter:
    """What to look for; ``None`` means no condition. Times are exclusive at ``until``."""

    since: datetime | None = None
    until: datetime | None = None
    ae: str | None = None
    study: str | None = None
    series: str | None = None
    state: str | None = None
    #: Events only: the event name (``job_transition``, ``send_attempt``, ...).
    what: str | None = None
    #: Events only: the job the event belongs to.
    job_id: int | None = None
    limit: int = 1000
    #: Newest first instead of oldest first.
    newest_first: bool = False


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 date or time (UTC unless an offset is given); ``option`` names it in the error."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditQueryError(f"{option}: {text!r} is not an ISO 8601 date or time") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _column(model: type[Base], name: str) -> InstrumentedAttribute[Any]:
    column: InstrumentedAttribute[Any] = getattr(model, name)
    return column


def columns_of(table: str) -> list[str]:
    if table not in TABLES:
        raise AuditQueryError(f"unknown table {table!r} (one of {', '.join(sorted(TABLES))})")
    return [c.key for c in TABLES[table].__table__.columns]


def _conditions(table: str, model: type[Base], f: AuditFilter) -> list[ColumnElement[bool]]:
    time_col = _column(model, TIME_COLUMN[table])
    conditions: list[ColumnElement[bool]] = []
    if f.since:
        conditions.append(time_col >= f.since)
    if f.until:
        conditions.append(time_col < f.until)
    if f.state:
        if table not in STATE_COLUMN:
            raise AuditQueryError(f"state does not apply to {table}")
        conditions.append(_column(model, STATE_COLUMN[table]) == f.state)
    for option, column in (("study", "study_instance_uid"), ("series", "series_instance_uid")):
        value = getattr(f, option)
        if value:
            if not hasattr(model, column):
                raise AuditQueryError(f"{option} does not apply to {table}")
            conditions.append(_column(model, column) == value)
    for option, value in (("what", f.what), ("job_id", f.job_id)):
        if value is not None:
            if model is not Event:
                raise AuditQueryError(f"{option} applies to events only")
            conditions.append(_column(Event, option) == value)
    return conditions


def query_rows(db: Database, table: str, f: AuditFilter) -> list[dict[str, Any]]:
    """The rows of ``table`` matching ``f``, as dictionaries of column values."""
    columns = columns_of(table)
    model = TABLES[table]
    conditions = _conditions(table, model, f)
    statement = select(model)
    if f.ae:
        if model is Association:
            conditions.append(or_(Association.calling_ae_title == f.ae, Association.called_ae_title == f.ae))
        elif model is Event:
            conditions.append(Event.calling_ae_title == f.ae)
        elif model is Instance:
            statement = statement.join(Association, Instance.association_id == Association.id)
            conditions.append(or_(Association.calling_ae_title == f.ae, Association.called_ae_title == f.ae))
        else:
            raise AuditQueryError(f"ae does not apply to {table}")
    time_col = _column(model, TIME_COLUMN[table])
    order = (time_col.desc(), _primary(model).desc()) if f.newest_first else (time_col, _primary(model))
    statement = statement.where(*conditions).order_by(*order).limit(max(0, f.limit))
    with db.read() as session:
        return [{c: getattr(row, c) for c in columns} for row in session.scalars(statement)]


def _primary(model: type[Base]) -> InstrumentedAttribute[Any]:
    return _column(model, str(inspect(model).primary_key[0].key))
