"""``segnode worker``: a cluster worker that takes the tasks of some stages (see ``dicom_node.cluster``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from config.loader import load_config
from dicom_node.cli import Subcommands
from dicom_node.logs import configure_logging


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a cluster worker for some stages (convert, segment, encode, send)",
        description="Take the tasks of the given stages' queues from the cluster's broker until SIGTERM "
        "(which lets the running task finish: a drain). A worker that takes segment keeps its engine warm "
        "for the life of the process: run one per GPU with --device cuda:N, and CPU workers for the rest.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", required=True, help="the cluster's YAML file")
    parser.add_argument(
        "--queues",
        default="convert,segment,encode,send",
        metavar="STAGES",
        help="comma-separated stages whose tasks this worker takes (default: all four)",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="inference device of this worker (cuda:N, cpu), over inference.device",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_node.cluster.worker import WorkerNode, parse_queues
    from inference.host_memory import configure_host_memory

    level = logging.DEBUG if args.verbose >= 2 else logging.INFO
    configure_logging(level)
    stages = parse_queues(args.queues)
    config = load_config(args.config)
    configure_host_memory(config.inference.cpu_memory)  # before the worker's threads exist
    node = WorkerNode(config, stages, device=args.device, source=str(args.config))
    return node.run(loglevel=logging.getLevelName(level))
