"""Helpers for the conversion tests: the series folders of the test data and dcm2niix as a reference.

dcm2niix (Debian package) is run as a subprocess into a temporary folder. Its NIfTI files store voxels in
RAS world coordinates (the sform), and it flips the DICOM row order (its ``j`` runs from the last DICOM row
to the first; Philips Enhanced objects are also stored with the columns reversed). Rather than trusting any
of this, :func:`index_mapping` derives the mapping from SegNode's voxel indices to dcm2niix's from the two
affines, requires it to be a signed permutation of the axes (a pure flip/transpose, no resampling), and
returns dcm2niix's voxels re-indexed into SegNode's ``(i, j, k)`` order.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from conversion import Volume

#: Series of the test data that SegNode must reject, by folder name, with the reason code.
EXPECTED_REJECTIONS = {
    "ax_asc_35sl_9_transfer_syntaxes": "unsupported_mosaic",
    "MR-SIEMENS-DICOM-WithOverlays_abdomen": "single_slice",
    "MR2_J2KI_Philips_shoulder_lossy": "single_slice",
    "MR2_J2KR_Philips_shoulder": "single_slice",
    "emri_small_EnhancedMR_BigEndian": "missing_geometry",
    "emri_small_EnhancedMR_J2K": "missing_geometry",
    "emri_small_EnhancedMR_JPEGLS": "missing_geometry",
    "emri_small_EnhancedMR_RLE": "missing_geometry",
    "STS_001_raw_AX_SE_T1_RTSTRUCT": "no_pixel_data",
    "STS_001_raw_AX_SE_T2FS_RTSTRUCT": "no_pixel_data",
}

#: World coordinates of corresponding corner voxels must agree within this (mm).
CORNER_TOLERANCE_MM = 0.01


def series_folders(root: Path) -> list[Path]:
    """Every folder under ``root`` holding DICOM files (one series per folder), sorted."""
    return sorted({p.parent for p in root.rglob("*.dcm")})


def folder_params(root: Path, prefix: str, *, segmentable_only: bool = False) -> list[Any]:
    """pytest parameters, one per series folder under ``root`` (only the series SegNode segments when
    ``segmentable_only``); a single skipped parameter saying so when ``root`` is absent."""
    if not root.is_dir():
        reason = f"MRI test set not present at {root}"
        return [pytest.param(None, id=f"{prefix}-absent", marks=pytest.mark.skip(reason=reason))]
    return [
        pytest.param(f, id=f"{prefix}-{f.relative_to(root)}")
        for f in series_folders(root)
        if not (segmentable_only and f.name in EXPECTED_REJECTIONS)
    ]


@dataclass
class RefVolume:
    """One 3D volume written by dcm2niix (a file, or one volume ``t`` of a 4D file)."""

    path: Path
    t: int
    data: np.ndarray[Any, Any]
    affine: np.ndarray[Any, Any]
    sidecar: dict[str, Any]
    b_value: float | None


def run_dcm2niix(folder: Path, out: Path) -> list[RefVolume]:
    """Convert ``folder`` with dcm2niix (no compression, BIDS sidecar, DICOM rescale, not Philips FP)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "y", "-p", "n", "-f", "%s_%e_%p_%z", "-o", str(out), str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode in (0, 2), f"dcm2niix failed on {folder}: {proc.stdout}\n{proc.stderr}"
    refs: list[RefVolume] = []
    for nii in sorted(out.glob("*.nii")):
        img: Any = nib.load(nii)
        data = np.asarray(img.get_fdata(dtype=np.float64))
        sidecar = (
            json.loads(nii.with_suffix(".json").read_text()) if nii.with_suffix(".json").exists() else {}
        )
        bval_path = nii.with_suffix(".bval")
        bvals = [float(v) for v in bval_path.read_text().split()] if bval_path.exists() else None
        volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
        for t, vol in enumerate(volumes):
            refs.append(
                RefVolume(
                    path=nii,
                    t=t,
                    data=vol,
                    affine=np.asarray(img.affine, dtype=np.float64),
                    sidecar=sidecar,
                    b_value=None if bvals is None else bvals[t],
                )
            )
    return refs


def index_mapping(volume: Volume, ref: RefVolume) -> np.ndarray[Any, Any] | None:
    """dcm2niix's voxels re-indexed as SegNode's ``[i, j, k]``, or ``None`` when the grids differ."""
    m = np.linalg.inv(ref.affine) @ volume.affine_ras
    rot = np.round(m[:3, :3])
    if np.max(np.abs(m[:3, :3] - rot)) > 1e-3 or sorted(np.abs(rot).sum(axis=0)) != [1.0, 1.0, 1.0]:
        return None
    axes = [int(np.argmax(np.abs(rot[:, a]))) for a in range(3)]
    if sorted(axes) != [0, 1, 2]:
        return None
    data = np.transpose(ref.data, axes)
    if data.shape != volume.shape:
        return None
    for a in range(3):
        if rot[axes[a], a] < 0:
            data = np.flip(data, axis=a)
    return data


def corner_distance(volume: Volume, ref: RefVolume) -> float:
    """Largest distance (mm) between the world coordinates of corresponding corner voxels."""
    m = np.linalg.inv(ref.affine) @ volume.affine_ras
    rot = np.round(m[:3, :3])
    offset = np.round(m[:3, 3])
    worst = 0.0
    for corner in itertools.product(*[(0, n - 1) for n in volume.shape]):
        ijk = np.array(corner, dtype=np.float64)
        ours = (volume.affine_ras @ np.append(ijk, 1.0))[:3]
        theirs_index = rot @ ijk + offset
        theirs = (ref.affine @ np.append(theirs_index, 1.0))[:3]
        worst = max(worst, float(np.linalg.norm(ours - theirs)))
    return worst


def values_equal(ours: np.ndarray[Any, Any], theirs: np.ndarray[Any, Any]) -> bool:
    """Equal voxel values: exact for integers, to float32 precision when a rescale slope applies."""
    return bool(np.allclose(ours, theirs, rtol=1e-5, atol=1e-3))
