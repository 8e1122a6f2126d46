"""The ``segnode`` command line.

Each subcommand lives in its own module of this package, which exposes ``register(subparsers)``; the
module adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning
the exit code). Heavy libraries (torch, nnunetv2, highdicom) are imported inside the functions, never at
module level, so that ``segnode --help`` and ``segnode serve`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TypeAlias

from config.errors import ConfigError, SegNodeError
from dicom_node.logs import configure_logging

#: What ``register`` is given: the ``segnode`` parser's subcommands.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Subcommand modules, in the order ``segnode --help`` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "dicom_node.cli.serve",
    "dicom_node.cli.worker",
    "dicom_node.cli.config_cmd",
    "dicom_node.cli.audit",
    "dicom_node.cli.segment",
    "dicom_node.cli.models",
    "dicom_node.cli.jobs",
    "dicom_node.cli.results",
    "dicom_node.cli.route",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segnode",
        description="SegNode: a DICOM node that segments MRI series and sends DICOM-SEG back to the PACS.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # subcommand not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(int(args.verbose), 2)
    configure_logging(level)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)  # noqa: T201
        return 2
    except SegNodeError as exc:
        print(f"error [{exc.reason}]: {exc.message}", file=sys.stderr)  # noqa: T201
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
