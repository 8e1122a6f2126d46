"""``segnode jobs list|show|retry|resend|cancel``: the jobs of the node, their stages and deliveries."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from config.errors import SegNodeError
from config.loader import default_config, load_config
from dicom_node.cli import Subcommands
from dicom_node.jobs.store import JobState

if TYPE_CHECKING:
    from dicom_node.jobs.context import PipelineContext


class JobsCommandError(SegNodeError):
    reason = "invalid_jobs_command"


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "jobs",
        help="list, show, retry, resend or cancel jobs (state, stage timings, reason, destinations)",
        description="The jobs of the node's database (the one of --config, or of the embedded defaults). "
        "retry, resend and cancel change the database; a running node picks the change up at its next poll.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="jobs, newest first")
    add_database_options(listing)
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    listing.add_argument("--series", metavar="UID", help="only jobs of this Series Instance UID")
    listing.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    show = actions.add_parser("show", help="one job: stages, timings, outputs, destinations, events")
    add_database_options(show)
    show.add_argument("job_id", type=int, metavar="JOB_ID")
    show.add_argument("--format", choices=["table", "json"], default="table")
    retry = actions.add_parser("retry", help="retry a failed job at its failed stage, or resend now")
    add_database_options(retry)
    retry.add_argument("job_id", type=int, metavar="JOB_ID")
    resend = actions.add_parser(
        "resend", help="send the objects of a done job again (e.g. the PACS lost them)"
    )
    add_database_options(resend)
    resend.add_argument("job_id", type=int, metavar="JOB_ID")
    resend.add_argument(
        "--destination",
        action="append",
        default=[],
        metavar="NAME",
        help="only this destination of the job (repeatable; default: all its destinations)",
    )
    resend.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=["seg", "sr", "overlay", "rtstruct"],
        help="only this kind of object (repeatable; default: every kind the job made)",
    )
    cancel = actions.add_parser("cancel", help="cancel a job that is not finished")
    add_database_options(cancel)
    cancel.add_argument("job_id", type=int, metavar="JOB_ID")
    parser.set_defaults(func=run)


def add_database_options(sub: argparse.ArgumentParser) -> None:
    """``--config`` and ``--database``: which node database a command reads."""
    sub.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration (for its database)")
    sub.add_argument("--database", metavar="URL", help="SQLAlchemy URL (overrides the configuration's)")


def open_context(args: argparse.Namespace) -> PipelineContext:
    """The stage context on the database of ``--config``/``--database`` (``JobsCommandError`` when it has
    no jobs table); the caller disposes of ``ctx.db``."""
    from dicom_node.audit.database import Database
    from dicom_node.audit.log import AuditLog
    from dicom_node.jobs.context import PipelineContext
    from dicom_node.jobs.store import JobStore

    config = load_config(args.config) if args.config else default_config()
    url = args.database or config.database.url
    db = Database(url)
    if not inspect(db.engine).has_table("jobs"):
        db.dispose()
        raise JobsCommandError(f"{db.engine.url.render_as_string()}: no jobs table (has the node run there?)")
    audit = AuditLog(db, config.config_hash(), config.privacy)
    return PipelineContext.create(config, audit, JobStore(audit))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _table(rows: list[list[str]], columns: list[str]) -> str:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def _list(ctx: PipelineContext, args: argparse.Namespace) -> str:
    from dicom_node.jobs.queries import JobFilter, list_jobs

    jobs = list_jobs(ctx.db, JobFilter(state=args.state, series=args.series, limit=args.limit))
    if args.format == "json":
        return json.dumps(jobs, default=_json_default, indent=2) + "\n"
    columns = ["id", "state", "failed_stage", "reason", "route", "series_instance_uid", "updated_at"]
    rows = [[_text(j[c]) for c in columns] for j in jobs]
    return _table(rows, columns) + f"({len(jobs)} job{'s' if len(jobs) != 1 else ''})\n"


def _show(ctx: PipelineContext, args: argparse.Namespace) -> str:
    from dicom_node.jobs.queries import show_job
    from dicom_node.outputs.outbox import delivery_label, first_line

    data = show_job(ctx.db, args.job_id)
    if args.format == "json":
        return json.dumps(data, default=_json_default, indent=2) + "\n"
    out = [f"job {data['id']}: {data['state']}"]
    for key in ("failed_stage", "reason", "detail", "route", "series_instance_uid", "study_instance_uid"):
        if data[key] is not None:
            out.append(f"  {key}: {data[key]}")
    out.append(f"  created {_text(data['created_at'])}, updated {_text(data['updated_at'])}")
    if data.get("worker"):
        held = f" (holds it until {_text(data['lease_expires_at'])})" if data.get("lease_expires_at") else ""
        out.append(f"  worker: {data['worker']}{held}")
    if data["stage_timings"]:
        out.append("stages:")
        for stage, entry in data["stage_timings"].items():
            extra = {k: v for k, v in entry.items() if k not in {"started_at", "ended_at", "seconds", "ok"}}
            more = "".join(f", {k} {v}" for k, v in extra.items())
            state = "" if entry.get("ok", True) else " (failed)"
            out.append(f"  {stage}: {entry['seconds']:.3f} s from {entry['started_at']}{state}{more}")
    segs = data["outputs"].get("seg", [])
    if segs:
        out.append("SEG objects:")
        for seg in segs:
            out.append(
                f"  {seg['file']} ({seg['segmentation_type']}, {seg['segments']} segments, "
                f"{seg['number_of_frames']} frames) -> {', '.join(seg['destinations'])}"
            )
    for derived in data["outputs"].get("derived", []):
        out.append(
            f"{derived['kind']}: {len(derived['files'])} object(s), series "
            f"{derived['series_instance_uid']} -> {', '.join(derived['destinations'])}"
        )
    volumes = data["outputs"].get("volumetry")
    if volumes is not None:
        flagged = sum(1 for v in volumes if v["touches_border"] or v["below_cutoff"])
        out.append(
            f"volumes: {len(volumes)} structure(s), {flagged} with a warning (segnode results {data['id']})"
        )
    if data["deliveries"]:
        out.append("destinations:")
        columns = [
            "destination",
            "kind",
            "state",
            "attempts",
            "last_outcome",
            "last_attempt_at",
            "next_attempt_at",
        ]
        rows = [[_text(d[c]) for c in columns] for d in data["deliveries"]]
        out.append(_table(rows, columns).rstrip("\n"))
        for d in data["deliveries"]:
            label = delivery_label(d["destination"], d["kind"])
            if d["last_status"]:
                out.append(f"  {label} answered: {first_line(d['last_status'])}")
            if d["warning"]:
                out.append(f"  {label} warning: {d['warning']}")
    out.append("events:")
    for e in data["events"]:
        reason = f" [{e['reason']}]" if e["reason"] else ""
        detail = f": {e['detail']}" if e["detail"] else ""
        out.append(f"  {_text(e['at'])} {e['what']} {e['outcome']}{reason}{detail}")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from dicom_node.jobs.admin import cancel_job, resend_job, retry_job

    ctx = open_context(args)
    try:
        if args.action == "list":
            text = _list(ctx, args)
        elif args.action == "show":
            text = _show(ctx, args)
        elif args.action == "retry":
            text = retry_job(ctx, args.job_id) + "\n"
        elif args.action == "resend":
            text = resend_job(ctx, args.job_id, args.destination, args.kind) + "\n"
        else:
            text = cancel_job(ctx, args.job_id) + "\n"
    finally:
        ctx.db.dispose()
    sys.stdout.write(text)
    return 0
