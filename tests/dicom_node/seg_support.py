"""Helpers of the SEG and routing tests: Volumes from real test series and synthetic label maps.

``volumes_of(directory)`` uses ``conversion.load_series`` when the conversion package provides it, and
otherwise a small builder that follows the Volume contract (conversion/volume.py) for the test series.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from conversion.volume import SliceRef, Volume
from dicom_node.outputs.seg import CodeTriple, SegmentSpec

_ANATOMICAL_STRUCTURE = CodeTriple("91723000", "SCT", "Anatomical Structure")
_LEFT = CodeTriple("7771000", "SCT", "Left")
_RIGHT = CodeTriple("24028007", "SCT", "Right")

#: Segment descriptions of a few total_mr labels (SNOMED CT codes as in the structure catalog).
TEST_SEGMENTS: dict[int, SegmentSpec] = {
    1: SegmentSpec(
        1, "spleen", _ANATOMICAL_STRUCTURE, CodeTriple("78961009", "SCT", "Spleen"), None, (157, 108, 162)
    ),
    2: SegmentSpec(
        2,
        "kidney_right",
        _ANATOMICAL_STRUCTURE,
        CodeTriple("64033007", "SCT", "Kidney"),
        _RIGHT,
        (185, 102, 83),
    ),
    3: SegmentSpec(
        3,
        "kidney_left",
        _ANATOMICAL_STRUCTURE,
        CodeTriple("64033007", "SCT", "Kidney"),
        _LEFT,
        (185, 102, 83),
    ),
    5: SegmentSpec(
        5, "liver", _ANATOMICAL_STRUCTURE, CodeTriple("10200004", "SCT", "Liver"), None, (221, 130, 101)
    ),
    17: SegmentSpec(
        17,
        "prostate",
        _ANATOMICAL_STRUCTURE,
        CodeTriple("41216001", "SCT", "Prostate"),
        None,
        (230, 158, 140),
    ),
}


def _load_series_from_conversion(directory: Path) -> list[Volume] | None:
    try:
        module = importlib.import_module("conversion")
    except ImportError:
        return None
    load = getattr(module, "load_series", None)
    if load is None:
        return None
    volumes: list[Volume] = list(load(sorted(p for p in directory.iterdir() if p.is_file())))
    return volumes


def _frames(ds: Dataset) -> list[tuple[int | None, list[float], list[float]]]:
    """(frame number, position, orientation) of each image in a dataset."""
    if "PerFrameFunctionalGroupsSequence" in ds and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        out = []
        for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
            pos = item.PlanePositionSequence[0].ImagePositionPatient
            ori_item = item if "PlaneOrientationSequence" in item else shared
            ori = ori_item.PlaneOrientationSequence[0].ImageOrientationPatient
            out.append((n, [float(v) for v in pos], [float(v) for v in ori]))
        return out
    return [
        (None, [float(v) for v in ds.ImagePositionPatient], [float(v) for v in ds.ImageOrientationPatient])
    ]


def _spacing(ds: Dataset) -> list[float]:
    if "PixelSpacing" in ds:
        return [float(v) for v in ds.PixelSpacing]
    shared = ds.SharedFunctionalGroupsSequence[0]
    group = shared if "PixelMeasuresSequence" in shared else ds.PerFrameFunctionalGroupsSequence[0]
    measures = group.PixelMeasuresSequence[0]
    return [float(v) for v in measures.PixelSpacing]


def build_volumes(directory: Path) -> list[Volume]:
    """Volumes of a directory with one series (test builder; stacks = repeated positions, in order)."""
    datasets = [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(directory.iterdir()) if p.is_file()
    ]
    datasets = [d for d in datasets if "SOPInstanceUID" in d]
    datasets.sort(key=lambda d: int(d.get("InstanceNumber", 0) or 0))
    first = datasets[0]
    images = [(ds, n, pos, ori) for ds in datasets for (n, pos, ori) in _frames(ds)]
    ori = np.asarray(images[0][3])
    normal = np.cross(ori[:3], ori[3:])
    # Stack index = rank of the image among those at the same position (acquisition order).
    by_position: dict[float, int] = defaultdict(int)
    stacks: dict[int, list[tuple[Dataset, int | None, list[float]]]] = defaultdict(list)
    for ds, n, pos, _ in images:
        key = round(float(np.dot(pos, normal)), 2)
        stacks[by_position[key]].append((ds, n, pos))
        by_position[key] += 1
    volumes = []
    for index in sorted(stacks):
        members = sorted(stacks[index], key=lambda m: float(np.dot(m[2], normal)))
        ps = _spacing(members[0][0])
        rows, cols = int(first.Rows), int(first.Columns)
        affine = np.eye(4)
        affine[:3, 0] = ori[:3] * ps[1]
        affine[:3, 1] = ori[3:] * ps[0]
        p0 = np.asarray(members[0][2])
        affine[:3, 2] = (np.asarray(members[-1][2]) - p0) / max(len(members) - 1, 1)
        affine[:3, 3] = p0
        refs = tuple(SliceRef(str(m[0].SOPInstanceUID), str(m[0].SOPClassUID), m[1]) for m in members)
        seen: dict[str, Dataset] = {}
        for m in members:
            seen.setdefault(str(m[0].SOPInstanceUID), m[0])
        volumes.append(
            Volume(
                voxels=np.zeros((cols, rows, len(members)), dtype=np.float32),
                affine=affine,
                slice_refs=refs,
                frame_of_reference_uid=str(first.FrameOfReferenceUID),
                modality=str(first.Modality),
                study_instance_uid=str(first.StudyInstanceUID),
                series_instance_uid=str(first.SeriesInstanceUID),
                source_headers=tuple(seen.values()),
                stack_key={"stack": index} if len(stacks) > 1 else {},
                stack_label=f"stack {index + 1} of {len(stacks)}" if len(stacks) > 1 else "",
            )
        )
    return volumes


def volumes_of(directory: Path) -> list[Volume]:
    from_conversion = _load_series_from_conversion(directory)
    return from_conversion if from_conversion is not None else build_volumes(directory)


def synthetic_label_map(shape: tuple[int, int, int], labels: list[int], seed: int = 0) -> npt.NDArray[Any]:
    """Blocks and spheres of several labels, placed asymmetrically (any flip or transpose shows up)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=np.uint8)
    ii, jj, kk = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    nx, ny, nz = shape
    for n, label in enumerate(labels):
        cx = nx * (0.2 + 0.6 * rng.random())
        cy = ny * (0.15 + 0.5 * rng.random())
        cz = nz * (0.2 + 0.5 * rng.random())
        r = max(2.0, min(nx, ny) * (0.08 + 0.04 * n))
        if n % 2 == 0:
            rz = max(1.0, nz * 0.25)
            mask = ((ii - cx) / r) ** 2 + ((jj - cy) / (1.4 * r)) ** 2 + ((kk - cz) / rz) ** 2 <= 1.0
        else:
            mask = (
                (np.abs(ii - cx) < r) & (np.abs(jj - cy) < 0.6 * r) & (kk >= int(cz)) & (kk < int(cz) + 2 + n)
            )
        out[mask] = label
    # Leave the first and last slices empty so that omitted frames are exercised.
    out[:, :, 0] = 0
    out[:, :, -1] = 0
    return out
