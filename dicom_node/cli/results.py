"""``segnode results JOB``: the volume of every structure a job segmented, with its two warnings (touches
the image border: a lower bound; below the plausibility cut-off: likely failed), as a table, CSV or JSON.

The numbers are those of the job's volumetry SR (TID 1500); the encoding stage stores them with the job,
so they are there whether the route sends the SR or not, and after retention removed the outbox.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from dicom_node.cli import Subcommands
from dicom_node.cli.jobs import add_database_options, open_context


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "results",
        help="volumes (ml) of the structures of a job, with border and plausibility flags",
        description="The volume of every structure a job segmented (voxel count x voxel volume), whether "
        "it touches the image border (the volume is then a lower bound) and whether it is below the "
        "plausibility cut-off of TotalSegmentator's MRI paper (likely a failed segmentation).",
    )
    parser.add_argument("job_id", type=int, metavar="JOB_ID")
    parser.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="table for people (default), csv or json with every column",
    )
    add_database_options(parser)
    parser.set_defaults(func=run)


def _flags(row: Mapping[str, Any]) -> str:
    flags = []
    if row["touches_border"]:
        flags.append("touches border: lower bound")
    if row["below_cutoff"]:
        flags.append(f"below {row['cutoff_ml']:g} ml: likely failed")
    return "; ".join(flags)


def table(job_id: int, rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows for people: one line per structure, grouped by stack."""
    if not rows:
        return f"job {job_id}: no structure was found (empty segmentation)\n"
    out: list[str] = []
    stacks = list(dict.fromkeys((r["series_instance_uid"], r["stack"], r["task"]) for r in rows))
    width = max(len(str(r["display_name"])) for r in rows)
    for series, stack, task in stacks:
        label = f", stack {stack}" if stack else ""
        out.append(f"job {job_id}: series {series}{label}, task {task}")
        out.append(f"  {'structure':<{width}}  {'volume ml':>10}  {'voxels':>9}  flags")
        for r in rows:
            if (r["series_instance_uid"], r["stack"], r["task"]) == (series, stack, task):
                name, ml, voxels = r["display_name"], r["volume_ml"], r["voxels"]
                out.append(f"  {name:<{width}}  {ml:>10.2f}  {voxels:>9d}  {_flags(r)}".rstrip())
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    from dicom_node.jobs.queries import job_results
    from dicom_node.outputs.volumetry import to_csv, to_json

    ctx = open_context(args)
    try:
        rows = job_results(ctx.db, args.job_id)
    finally:
        ctx.db.dispose()
    if args.format == "csv":
        text = to_csv(rows)
    elif args.format == "json":
        text = to_json(rows) + "\n"
    else:
        text = table(args.job_id, rows)
    sys.stdout.write(text)
    return 0
