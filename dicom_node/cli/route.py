"""``segnode route simulate DICOM_DIR --config FILE``: which route each series would take, and why."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from config.errors import SegNodeError
from config.loader import load_config
from dicom_node.cli import Subcommands

logger = logging.getLogger(__name__)


class SimulationInputError(SegNodeError):
    """The folder to simulate on cannot be used."""

    reason = "invalid_input"


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser("route", help="inspect routing")
    sub = parser.add_subparsers(dest="route_command", metavar="ACTION")
    sub.required = True
    simulate = sub.add_parser(
        "simulate",
        help="show the route each series in a folder would take",
        description="Read the DICOM files under DICOM_DIR (headers only), group them by series and print, "
        "for each series, the rule that matched and why, why the other rules did not, and the action.",
    )
    simulate.add_argument("dicom_dir", type=Path, metavar="DICOM_DIR")
    simulate.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="SegNode YAML configuration"
    )
    simulate.add_argument(
        "--called-ae",
        default=None,
        help="called AE title to assume (default: the node's first AE title)",
    )
    simulate.add_argument("--calling-ae", default="", help="calling AE title to assume (default: empty)")
    simulate.set_defaults(func=simulate_folder)


def read_series_headers(folder: Path) -> dict[str, list[Any]]:
    """Headers (no pixel data) of every DICOM file under ``folder``, grouped by Series Instance UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not folder.is_dir():
        raise SimulationInputError(f"{folder}: not a folder")
    series: dict[str, list[Any]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            logger.info("skipping %s: not a DICOM file (%s)", path, exc)
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            logger.warning("skipping %s: no SeriesInstanceUID", path)
            continue
        series[uid].append(ds)
    return dict(series)


def simulate_folder(args: argparse.Namespace) -> int:
    from dicom_node.jobs.routing import SeriesFacts, describe_decision, route_series

    config = load_config(args.config)
    called = args.called_ae or config.node.ae_titles[0].ae_title
    series = read_series_headers(args.dicom_dir)
    if not series:
        raise SimulationInputError(f"{args.dicom_dir}: no DICOM series found")
    out = sys.stdout
    out.write(
        f"{len(series)} series under {args.dicom_dir}; {len(config.routes)} route(s) in {args.config}\n"
    )
    for uid in sorted(series, key=lambda u: (str(series[u][0].get("SeriesNumber", "")), u)):
        headers = sorted(series[uid], key=lambda d: int(d.get("InstanceNumber", 0) or 0))
        facts = SeriesFacts.from_headers(headers, called, args.calling_ae)
        decision = route_series(facts, config.routes, config.default_route)
        for line in describe_decision(decision):
            out.write(line + "\n")
    return 0
