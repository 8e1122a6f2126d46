"""Structure volumes of a label map, with the two warnings radiologists need next to a number.

The volume of a structure is its voxel count times the voxel volume (``|det|`` of the Volume affine's
3x3 part, mm3, / 1000 = ml). Two flags qualify it:

* **touches the image border**: a voxel of the structure lies on the first or last row, column or slice
  of the stack, so part of the structure may lie outside the imaged volume and the volume is a lower bound
  (TotalSegmentator's own statistics report such a structure as 0 instead);
* **below the plausibility cut-off**: the volume is below the lower limit that TotalSegmentator's MRI paper
  (Radiology 2025) uses to mark a likely failed segmentation: spleen 40 ml, right kidney 50 ml, left kidney
  30 ml, liver 100 ml, adrenal glands 1 ml.

The same numbers feed the TID 1500 volumetry SR (:mod:`dicom_node.outputs.sr`) and ``segnode results``
(CSV/JSON).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from conversion.volume import Volume
from dicom_node.outputs.derived import DerivedEncodingError, label_counts
from dicom_node.outputs.label_layout import LabelLayout

#: Lower plausibility limits (ml) by catalog structure name, from TotalSegmentator's MRI paper.
PLAUSIBILITY_CUTOFFS_ML: Mapping[str, float] = {
    "spleen": 40.0,
    "kidney_right": 50.0,
    "kidney_left": 30.0,
    "liver": 100.0,
    "adrenal_gland_right": 1.0,
    "adrenal_gland_left": 1.0,
}


@dataclass(frozen=True)
class StructureVolume:
    """The volume of one structure in one stack."""

    label: int
    #: Catalog name (``kidney_left``) and display name (``Left kidney``).
    name: str
    display_name: str
    voxels: int
    volume_ml: float
    touches_border: bool
    #: The structure's plausibility cut-off (ml), ``None`` where the paper gives none.
    cutoff_ml: float | None

    @property
    def below_cutoff(self) -> bool:
        return self.cutoff_ml is not None and self.volume_ml < self.cutoff_ml


@dataclass(frozen=True)
class Volumetry:
    """The volumes of every structure present in one stack's label map, in label order."""

    series_instance_uid: str
    stack_label: str
    task: str
    voxel_volume_ml: float
    structures: tuple[StructureVolume, ...]

    @property
    def labels(self) -> tuple[int, ...]:
        """The labels present in the label map (every one has a structure here)."""
        return tuple(s.label for s in self.structures)


def border_labels(label_map: npt.NDArray[np.integer[Any]]) -> set[int]:
    """Labels with a voxel on one of the six faces of the volume."""
    faces = (
        label_map[0],
        label_map[-1],
        label_map[:, 0],
        label_map[:, -1],
        label_map[:, :, 0],
        label_map[:, :, -1],
    )
    found: set[int] = set()
    for face in faces:
        found.update(int(v) for v in np.unique(face))
    found.discard(0)
    return found


def measure(
    volume: Volume,
    label_map: npt.NDArray[np.integer[Any]],
    task: str,
    names: Mapping[int, tuple[str, str]],
    layout: LabelLayout | None = None,
) -> Volumetry:
    """Volumes of the labels present in ``label_map`` (same shape as ``volume``); ``names`` maps each label
    to its (catalog name, display name); ``layout``: the label map's counts and boxes, where the caller has
    made them for the stack's other outputs (:func:`~dicom_node.outputs.label_layout.label_layout`): the
    map is then not read again."""
    if label_map.shape != volume.shape:
        raise DerivedEncodingError(f"label map shape {label_map.shape} != volume shape {volume.shape}")
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    if layout is None:
        counts = label_counts(np.asarray(label_map))
        on_border = border_labels(label_map)
    else:
        layout.check(label_map, f"series {volume.series_instance_uid}")
        counts, on_border = layout.counts, layout.on_border()
    structures = []
    for label in (int(v) for v in np.flatnonzero(counts)):
        if label == 0:
            continue
        if label not in names:
            raise DerivedEncodingError(f"label {label} of task {task!r} is not in the structure catalog")
        name, display = names[label]
        structures.append(
            StructureVolume(
                label=label,
                name=name,
                display_name=display,
                voxels=int(counts[label]),
                volume_ml=int(counts[label]) * voxel_ml,
                touches_border=label in on_border,
                cutoff_ml=PLAUSIBILITY_CUTOFFS_ML.get(name),
            )
        )
    return Volumetry(volume.series_instance_uid, volume.stack_label, task, voxel_ml, tuple(structures))


def catalog_names(task: str) -> dict[int, tuple[str, str]]:
    """Label -> (catalog name, display name) of a task."""
    from inference import catalog

    return {int(k): (s.name, s.display_name) for k, s in catalog.get_catalog(task).items()}


#: Columns of the CSV and keys of the JSON rows of ``segnode results``.
RESULT_COLUMNS = (
    "series_instance_uid",
    "stack",
    "task",
    "label",
    "structure",
    "display_name",
    "voxels",
    "volume_ml",
    "touches_border",
    "cutoff_ml",
    "below_cutoff",
)


def result_rows(volumetries: Sequence[Volumetry]) -> list[dict[str, Any]]:
    """One row per structure and stack (the SR's numbers, unrounded)."""
    rows = []
    for report in volumetries:
        for s in report.structures:
            rows.append(
                {
                    "series_instance_uid": report.series_instance_uid,
                    "stack": report.stack_label,
                    "task": report.task,
                    "label": s.label,
                    "structure": s.name,
                    "display_name": s.display_name,
                    "voxels": s.voxels,
                    "volume_ml": s.volume_ml,
                    "touches_border": s.touches_border,
                    "cutoff_ml": s.cutoff_ml,
                    "below_cutoff": s.below_cutoff,
                }
            )
    return rows


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`result_rows` (or of a job's ``outputs['volumetry']``) as CSV, header first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in RESULT_COLUMNS})
    return out.getvalue()


def to_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`result_rows` as a JSON array of objects with the keys of :data:`RESULT_COLUMNS`."""
    return json.dumps([{k: row.get(k) for k in RESULT_COLUMNS} for row in rows], indent=2)
