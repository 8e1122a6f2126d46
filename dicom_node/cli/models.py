"""``segnode models``: list, download, import and check the model weights of the segmentation tasks.

The weights folder is ``inference.weights_dir`` of the configuration (``--config``, else the embedded
defaults with their ``SEGNODE__INFERENCE__...`` environment overrides), else ``$TOTALSEG_WEIGHTS_PATH``, else
``~/.totalsegmentator/nnunet/results``; an existing TotalSegmentator tree works as it is.

``download`` contacts only the configured download location (TotalSegmentator's GitHub release, or its
licence server for licensed tasks); SegNode sends no usage statistics. ``import`` installs a zip or a folder
copied from a machine with internet access.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from config.inference import InferenceConfig
from dicom_node.cli import Subcommands

MODES = ("default", "fast", "fastest")


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, download, import and check model weights",
        description="List, download, import and check the model weights of the segmentation tasks. SegNode "
        "sends no usage statistics: `download` contacts only the configured download location "
        "(TotalSegmentator's release or licence server by default); `import` works without network.",
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, metavar="FILE", help="SegNode YAML configuration")

    listing = actions.add_parser(
        "list", help="per task: installed, partial or missing; licensed; size on disk"
    )
    common(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)

    download = actions.add_parser(
        "download",
        help="download a task's weights from the official release (licensed tasks: the licence server)",
        description="Download the weights of TASK into the weights folder: to a temporary file, checked "
        "(length, zip CRCs, layout), then extracted and moved into place. Installed part models are kept.",
    )
    download.add_argument("task", metavar="TASK", help="e.g. total_mr, vertebrae_mr, body_mr")
    download.add_argument(
        "--license-key", metavar="KEY", help="TotalSegmentator licence number (licensed tasks)"
    )
    download.add_argument("--mode", choices=MODES, help="only the part models of this mode (default: all)")
    download.add_argument("--force", action="store_true", help="download again what is already installed")
    download.add_argument(
        "--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)"
    )
    common(download)
    download.set_defaults(func=run_download)

    importing = actions.add_parser(
        "import",
        help="install weights from a zip or a folder (for nodes without internet)",
        description="PATH is a zip with DatasetNNN_Name folders at its top level (as the release zips), a "
        "DatasetNNN_Name folder, or a folder holding such folders (e.g. ~/.totalsegmentator/nnunet/results).",
    )
    importing.add_argument("path", type=Path, metavar="PATH", help="zip file or folder")
    common(importing)
    importing.set_defaults(func=run_import)

    check = actions.add_parser(
        "check", help="exit 0 when a task's weights are installed for a mode, else name what is missing"
    )
    check.add_argument("task", metavar="TASK")
    check.add_argument("--mode", choices=MODES, default="default", help="default: default")
    common(check)
    check.set_defaults(func=run_check)


def _inference_config(args: argparse.Namespace) -> InferenceConfig:
    from config.loader import default_config, load_config

    config = load_config(args.config) if args.config is not None else default_config()
    return config.inference


def _weights_dir_origin(config: InferenceConfig) -> str:
    if config.weights_dir is not None:
        return "configuration inference.weights_dir"
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return "$TOTALSEG_WEIGHTS_PATH"
    return "TotalSegmentator's default"


def _size(n: int) -> str:
    if n <= 0:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def run_list(args: argparse.Namespace) -> int:
    from inference import catalog, weights

    config = _inference_config(args)
    catalog.validate_catalog()  # every label described: the SEGs of every listed task can be written
    weights_dir = weights.resolve_weights_dir(config)
    statuses = weights.weights_status(weights_dir)
    if args.json:
        document: dict[str, Any] = {
            "weights_dir": str(weights_dir),
            "tasks": [
                status.to_json() | {"structures": len(catalog.get_catalog(status.task))}
                for status in statuses
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    lines = [
        f"weights folder: {weights_dir} ({_weights_dir_origin(config)})",
        f"{'TASK':<27} {'STATE':<10} {'LICENSED':<9} {'STRUCT':>6}  {'MODES INSTALLED':<22} {'SIZE':>9}  "
        "MISSING",
    ]
    for status in statuses:
        modes = ", ".join(mode for mode, ok in status.modes.items() if ok) or "-"
        missing = " ".join(str(m.dataset_id) for m in status.models if not m.installed) or "-"
        structures = len(catalog.get_catalog(status.task))
        lines.append(
            f"{status.task:<27} {status.state:<10} {'yes' if status.licensed else 'no':<9} {structures:>6}  "
            f"{modes:<22} {_size(status.size_bytes):>9}  {missing}"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from inference import weights, weights_install

    config = _inference_config(args)
    weights_dir = weights.resolve_weights_dir(config)
    folders = weights_install.download_task(
        str(args.task),
        weights_dir,
        locations=weights.DownloadLocations.from_config(config),
        license_key=args.license_key or config.license_key,
        mode=args.mode,
        progress=sys.stderr,
        timeout=float(args.timeout),
        force=bool(args.force),
    )
    for folder in folders:
        sys.stdout.write(f"installed: {folder}\n")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from inference import weights, weights_install

    weights_dir = weights.resolve_weights_dir(_inference_config(args))
    for model in weights_install.import_weights(Path(args.path), weights_dir):
        sys.stdout.write(f"installed: {model.model_dir(weights_dir)} (dataset {model.dataset_id})\n")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from inference import registry, weights

    weights_dir = weights.resolve_weights_dir(_inference_config(args))
    task = registry.get_task(str(args.task))
    for model in task.models(args.mode):
        folder = weights.find_model_folder(model, weights_dir, task=task.name)
        sys.stdout.write(f"{task.name} {args.mode}: dataset {model.dataset_id} in {folder}\n")
    return 0
