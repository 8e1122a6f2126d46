"""``segnode audit``: list and filter the audit log as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect

from config.loader import default_config, load_config
from dicom_node.audit.database import Database
from dicom_node.audit.query import TABLES, AuditFilter, AuditQueryError, columns_of, parse_time, query_rows
from dicom_node.cli import Subcommands

__all__ = ["AuditQueryError", "register", "run"]


def register(subparsers: Subcommands) -> None:
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


def audit_filter(args: argparse.Namespace) -> AuditFilter:
    """The command line's filters."""
    return AuditFilter(
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        ae=args.ae,
        study=args.study,
        series=args.series,
        state=args.state,
        limit=args.limit,
    )


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
        conditions = audit_filter(args)
        try:
            rows = query_rows(db, args.table, conditions)
        except AuditQueryError as exc:
            raise AuditQueryError("--" + exc.message) from exc
    finally:
        db.dispose()
    columns = columns_of(args.table)
    sys.stdout.write(render(rows, columns, args.format))
    return 0
