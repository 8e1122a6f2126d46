"""``segnode serve``: run the receiving node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from config.errors import ConfigError
from config.loader import default_config, load_config
from dicom_node.cli import Subcommands
from dicom_node.logs import configure_logging

LOG = logging.getLogger(__name__)


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (C-ECHO/C-STORE SCP, series completion, audit log)",
        description="Run the DICOM node until SIGTERM/SIGINT. Without --config it runs on the embedded "
        "defaults (the packaged config/example.yaml). SEGNODE__SECTION__KEY environment variables override "
        "keys of the file.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    parser.add_argument(
        "--role",
        choices=["embedded", "receiver"],
        default="embedded",
        help="embedded (default): everything in this process; receiver: SCP, series completion and the "
        "dispatch of jobs to the cluster's workers (needs the cluster section; see segnode worker)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dicom_node.service import NodeService
    from inference.host_memory import configure_host_memory

    configure_logging(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    config = load_config(args.config) if args.config else default_config()
    if config.cluster is not None and args.role == "embedded":
        raise ConfigError(
            [
                "cluster: this configuration is a cluster's (broker "
                f"{config.cluster.broker_url.split('@')[-1]}): run `segnode serve --role receiver` and "
                "`segnode worker`, or remove the cluster section for the embedded node"
            ]
        )
    configure_host_memory(config.inference.cpu_memory)  # before the node's threads exist
    service = NodeService(config, role=args.role)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        LOG.warning("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0
