"""Model folders in TotalSegmentator's layout (what ``segnode models`` and the weights code check), and zips
of them as TotalSegmentator's releases are packed."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from inference.registry import PartModel


def make_model_folder(weights_dir: Path, model: PartModel, checkpoint: bytes = b"tiny checkpoint") -> Path:
    """A minimal folder in TotalSegmentator's layout for ``model`` (JSON files as nnU-Net v2 writes them)."""
    model_dir = model.model_dir(weights_dir)
    (model_dir / f"fold_{model.fold}").mkdir(parents=True)
    labels = {"background": 0} | {name: label for label, name in model.class_map.items()}
    (model_dir / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels}))
    plans = {"dataset_name": model.dataset_folder_name, "configurations": {model.configuration: {}}}
    (model_dir / "plans.json").write_text(json.dumps(plans))
    model.checkpoint_path(weights_dir).write_bytes(checkpoint)
    return model_dir


def zip_bytes(folder: Path, arc_root: str | None = None) -> bytes:
    """A zip of ``folder`` with its files under ``arc_root`` (default: the folder's name) at the top level,
    as TotalSegmentator's release zips are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, (Path(arc_root or folder.name) / path.relative_to(folder)).as_posix())
    return buffer.getvalue()


def write_zip(folder: Path, archive: Path, arc_root: str | None = None) -> Path:
    """:func:`zip_bytes` written to ``archive``."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(zip_bytes(folder, arc_root))
    return archive
