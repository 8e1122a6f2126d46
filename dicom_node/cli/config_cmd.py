"""``segnode config validate FILE``: print every problem of a configuration file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from config.errors import ConfigError
from config.loader import load_config
from dicom_node.cli import Subcommands


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser("config", help="check configuration files")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    validate = sub.add_parser(
        "validate",
        help="validate a YAML configuration file",
        description="Validate FILE (with SEGNODE__* environment overrides applied); print every problem as "
        "'file: key.path: reason' and exit 2, or print 'FILE: valid' and exit 0.",
    )
    validate.add_argument("file", type=Path, metavar="FILE")
    validate.set_defaults(func=validate_file)


def validate_file(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"error: {problem}\n")
        sys.stderr.write(f"{args.file}: {len(exc.problems)} problem(s)\n")
        return 2
    sys.stdout.write(f"{args.file}: valid (configuration hash {config.config_hash()})\n")
    return 0
