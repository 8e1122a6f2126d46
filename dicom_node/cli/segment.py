"""``segnode segment DICOM_DIR --out OUT``: segment one series without a PACS.

Every stack of the series becomes a label map written as NIfTI in the source geometry (the stack's voxel grid
and RAS affine, nothing resampled), with a JSON sidecar (class map, models, device, time per stage).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.errors import SegNodeError
from config.inference import InferenceConfig
from dicom_node.cli import Subcommands

if TYPE_CHECKING:
    from conversion.volume import Volume
    from inference.results import SegmentationResult

logger = logging.getLogger(__name__)


class SegmentInputError(SegNodeError):
    reason = "invalid_input"


def register(subparsers: Subcommands) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment one DICOM series and write the label map as NIfTI",
        description="Load the DICOM series in DICOM_DIR, segment each of its stacks with the task's models "
        "and write OUT/<task>[_<n>_<stack>].nii.gz (source geometry), a .json sidecar and a DICOM-SEG "
        "(.seg.dcm, referencing the source instances) per stack.",
    )
    parser.add_argument("dicom_dir", type=Path, metavar="DICOM_DIR", help="folder with the series' files")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--task", default=None, help="task (default: inference.default_task, i.e. total_mr)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true", help="the 3 mm model (total_mr: 852)")
    speed.add_argument("--fastest", action="store_true", help="the 6 mm model (total_mr: 853)")
    parser.add_argument(
        "--roi-subset", nargs="+", default=None, metavar="STRUCTURE", help="only these structures (total_mr)"
    )
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (overrides the config)")
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="SegNode YAML configuration"
    )
    parser.add_argument(
        "--seg",
        choices=["binary", "labelmap", "none"],
        default="binary",
        help="Segmentation Type of the DICOM-SEG written beside the NIfTI (default binary; none: no SEG)",
    )
    parser.set_defaults(func=run_segment)


def _inference_config(args: argparse.Namespace) -> InferenceConfig:
    if args.config is not None:
        from config.loader import load_config

        config = load_config(args.config).inference
    else:
        config = InferenceConfig()
    if args.device:
        config = config.model_copy(update={"device": args.device})
    return config


def _series_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SegmentInputError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
    if not files:
        raise SegmentInputError(f"{folder}: no files")
    return files


def _stack_name(task: str, index: int, count: int, label: str) -> str:
    if count == 1:
        return task
    slug = re.sub(r"[^A-Za-z0-9=.+-]+", "_", label).strip("_")[:40]
    return f"{task}_{index + 1}" + (f"_{slug}" if slug else "")


def _write_seg(args: argparse.Namespace, volume: Volume, result: SegmentationResult, path: Path) -> None:
    """Encode the stack's label map as DICOM-SEG (``seg`` section of --config) and write it atomically."""
    from config.routing import SegConfig
    from dicom_node.durable import write_dicom
    from dicom_node.outputs.encode import encode_result_seg
    from dicom_node.outputs.seg import EmptySegmentationError

    seg_config = SegConfig()
    if args.config is not None:
        from config.loader import load_config

        seg_config = load_config(args.config).seg
    try:
        encoded = encode_result_seg(volume, result.labels, result, seg_config, args.seg.upper())
    except EmptySegmentationError as exc:
        logger.warning("no DICOM-SEG written for %s: %s", path.name, exc.message)
        return
    write_dicom(encoded.dataset, path)
    sys.stdout.write(f"{path}: DICOM-SEG {args.seg.upper()}, {len(encoded.segment_labels)} segments\n")
    for correction in encoded.corrections:
        sys.stdout.write(f"{path}: source attribute corrected: {correction}\n")


def run_segment(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from conversion import load_series
    from inference.engine import Engine
    from inference.host_memory import configure_host_memory

    nib_any: Any = nib

    config = _inference_config(args)
    configure_host_memory(config.cpu_memory)
    task = args.task or config.default_task
    files = _series_files(args.dicom_dir)
    start = time.perf_counter()
    volumes = load_series(files)
    load_s = time.perf_counter() - start
    engine = Engine(config)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, volume in enumerate(volumes):
        result = engine.segment(
            volume.voxels,
            volume.affine,
            task=task,
            fast=args.fast,
            fastest=args.fastest,
            roi_subset=args.roi_subset,
        )
        name = _stack_name(task, index, len(volumes), volume.stack_label)
        image = nib_any.Nifti1Image(result.labels, volume.affine_ras)
        image.set_data_dtype(result.labels.dtype)
        image.header.set_xyzt_units("mm")
        image.set_qform(volume.affine_ras, code=1)
        image.set_sform(volume.affine_ras, code=1)
        nifti = args.out / f"{name}.nii.gz"
        nib.save(image, nifti)
        sidecar = {
            "series_instance_uid": volume.series_instance_uid,
            "stack": volume.stack_label,
            "task": result.task,
            "mode": result.mode,
            "roi_subset": list(result.roi_subset) if result.roi_subset else None,
            "class_map": {str(k): v for k, v in sorted(result.class_map.items())},
            "labels_present": [result.class_map.get(v, str(v)) for v in result.present_labels()],
            "models": [vars(m) for m in result.models],
            "device": result.device,
            "reference": result.reference,
            "timings_s": {k: round(v, 4) for k, v in result.timings.items()}
            | {"load_series": round(load_s, 4)},
            "events": result.events,
            "shape": [int(n) for n in np.shape(result.labels)],
        }
        (args.out / f"{name}.json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
        found = len(result.present_labels())
        if args.seg != "none":
            _write_seg(args, volume, result, args.out / f"{name}.seg.dcm")
        sys.stdout.write(f"{nifti}: {found} structures, {result.timings['total']:.1f}s on {result.device}\n")
    return 0
