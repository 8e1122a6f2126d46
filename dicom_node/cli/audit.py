"""``segnode audit``: list and filter the audit log as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, inspect, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from config.errors import SegNodeError
from config.loader import default_config, load_config
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
_TIME: dict[str, str] = {
    "events": "at",
    "associations": "started_at",
    "instances": "received_at",
    "series": "last_received_at",
    "jobs": "created_at",
}
_STATE: dict[str, str] = {"events": "outcome", "associations": "result", "series": "state", "jobs": "state"}


class AuditQueryError(SegNodeError):
    reason = "invalid_audit_query"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="list the audit log (events, associations, instances, series, jobs)",
        description="List audit rows, oldest first, filtered by time range, AE title, study/series UID and "
        "state. The database is the one of --config (or of the embedded defaults), or --database.",
    )
    parser.add_argument("table", nargs="?", default="events", choices=sorted(TABLES), help="default: events")
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration (for its database)")
    parser.add_argument("--database", metavar="URL", help="SQLAlchemy URL (overrides the configuration's)")
    parser.add_argument(
        "--since", metavar="TIME", help="ISO 8601 date or time (UTC unless an offset is given)"
    )
    parser.add_argument("--until", metavar="TIME", help="ISO 8601 date or time, exclusive")
    parser.add_argument("--ae", metavar="AE_TITLE", help="calling or called AE title")
    parser.add_argument("--study", metavar="UID", help="Study Instance UID")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID")
    parser.add_argument("--state", help="state / result / outcome, depending on the table")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    parser.set_defaults(func=run)


def parse_time(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditQueryError(f"{option}: {text!r} is not an ISO 8601 date or time") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _column(model: type[Base], name: str) -> InstrumentedAttribute[Any]:
    column: InstrumentedAttribute[Any] = getattr(model, name)
    return column


def query_rows(db: Database, table: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of ``table`` matching the filters in ``args``, as dictionaries of column values."""
    model = TABLES[table]
    time_col = _column(model, _TIME[table])
    conditions: list[ColumnElement[bool]] = []
    if args.since:
        conditions.append(time_col >= parse_time(args.since, "--since"))
    if args.until:
        conditions.append(time_col < parse_time(args.until, "--until"))
    if args.state:
        if table not in _STATE:
            raise AuditQueryError(f"--state does not apply to {table}")
        conditions.append(_column(model, _STATE[table]) == args.state)
    for option, column in (("study", "study_instance_uid"), ("series", "series_instance_uid")):
        value = getattr(args, option)
        if value:
            if not hasattr(model, column):
                raise AuditQueryError(f"--{option} does not apply to {table}")
            conditions.append(_column(model, column) == value)
    statement = select(model)
    if args.ae:
        if model is Association:
            conditions.append(
                or_(Association.calling_ae_title == args.ae, Association.called_ae_title == args.ae)
            )
        elif model is Event:
            conditions.append(Event.calling_ae_title == args.ae)
        elif model is Instance:
            statement = statement.join(Association, Instance.association_id == Association.id)
            conditions.append(
                or_(Association.calling_ae_title == args.ae, Association.called_ae_title == args.ae)
            )
        else:
            raise AuditQueryError(f"--ae does not apply to {table}")
    statement = statement.where(*conditions).order_by(time_col).limit(args.limit)
    columns = [c.key for c in model.__table__.columns]
    with db.read() as session:
        return [{c: getattr(row, c) for c in columns} for row in session.scalars(statement)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def render(rows: Sequence[dict[str, Any]], columns: list[str], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{c: _json(r[c]) for c in columns} for r in rows], indent=2) + "\n"
    if fmt == "csv":
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_text(r[c]) for c in columns])
        return buffer.getvalue()
    cells = [[_text(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def run(args: argparse.Namespace) -> int:
    if args.database:
        url = args.database
    else:
        url = (load_config(args.config) if args.config else default_config()).database.url
    db = Database(url)
    try:
        if not inspect(db.engine).has_table("events"):
            raise AuditQueryError(
                f"{db.engine.url.render_as_string()}: no audit tables (has the node run there?)"
            )
        rows = query_rows(db, args.table, args)
    finally:
        db.dispose()
    columns = [c.key for c in TABLES[args.table].__table__.columns]
    sys.stdout.write(render(rows, columns, args.format))
    return 0
