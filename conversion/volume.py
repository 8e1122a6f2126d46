"""The ``Volume``: voxels of one stack with exact geometry and per-slice source references.

Conventions (fixed; every stage relies on them):

* ``voxels`` has shape ``(columns, rows, slices)`` and is indexed ``[i, j, k]``: ``i`` runs along a row
  (the column index of the DICOM pixel matrix), ``j`` along a column (the row index), ``k`` over slices in
  the order of increasing position along the slice normal ``row_cosine x column_cosine``.
  ``voxels[:, :, k] == stored_pixels(slice_refs[k]).T`` with RescaleSlope/Intercept applied, as float32.
* ``affine`` (4x4, float64) maps ``(i, j, k, 1)`` to DICOM patient coordinates **LPS** in millimetres:
  column 0 = row direction cosine x column spacing (PixelSpacing[1]), column 1 = column direction cosine
  x row spacing (PixelSpacing[0]), column 2 = slice step vector, column 3 = ImagePositionPatient of slice 0.
  ``affine_ras`` gives the same for RAS (nibabel's convention).

``conversion.load_series`` builds volumes; ``voxels`` is then a Fortran-ordered view (slices are decoded
one after the other into contiguous memory); call ``np.ascontiguousarray`` where C order matters.
``conversion.to_nibabel`` / ``conversion.to_sitk`` give nibabel (RAS) and SimpleITK (LPS) images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class LazyHeaders(Sequence[Dataset]):
    """Headers obtained on first use: reading every complete header costs more than building the
    volume, and only the DICOM-SEG writer needs them."""

    def __init__(self, getters: Sequence[Callable[[], Dataset]]) -> None:
        self._getters = tuple(getters)
        self._headers: tuple[Dataset, ...] | None = None

    def _all(self) -> tuple[Dataset, ...]:
        if self._headers is None:
            self._headers = tuple(get() for get in self._getters)
        return self._headers

    def __len__(self) -> int:
        return len(self._getters)

    @overload
    def __getitem__(self, index: int) -> Dataset: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Dataset, ...]: ...

    def __getitem__(self, index: int | slice) -> Dataset | tuple[Dataset, ...]:
        return self._all()[index]

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self._all())

    def __repr__(self) -> str:
        return f"LazyHeaders({len(self)} headers)"


@dataclass(frozen=True)
class SliceRef:
    """Where one slice of a volume comes from."""

    sop_instance_uid: str
    sop_class_uid: str
    #: 1-based frame number for multi-frame objects, ``None`` for single-frame objects.
    frame_number: int | None = None


@dataclass
class Volume:
    """One segmentable stack of a series: voxels, their exact geometry and where each slice comes from.

    Built by :func:`conversion.load_series`; the conventions of the axes and the affine are those of this
    module's description. The attributes below are what the later stages (inference, the DICOM-SEG writer)
    read; a volume is never written back to DICOM itself.
    """

    #: Rescaled pixel values (RescaleSlope/Intercept applied), shape ``(columns, rows, slices)``.
    voxels: npt.NDArray[np.float32]
    #: 4x4 map from ``(i, j, k, 1)`` to patient coordinates (LPS, mm).
    affine: npt.NDArray[np.float64]
    #: The source instance (and frame) of each slice ``k``, in slice order.
    slice_refs: tuple[SliceRef, ...]
    frame_of_reference_uid: str
    modality: str
    study_instance_uid: str
    series_instance_uid: str
    #: Headers (no pixel data) of the source instances in slice order, one per distinct SOP Instance.
    source_headers: Sequence[Dataset]
    #: Attributes that tell this stack apart from the other stacks of its series
    #: (e.g. ``{"b_value": 800}``, ``{"image_type": "ORIGINAL\\PRIMARY\\M"}``, ``{"temporal_position": 3}``).
    stack_key: dict[str, Any] = field(default_factory=dict)
    #: A short human label for the stack, e.g. ``"b=800"`` or ``"stack 1 of 3"``.
    stack_label: str = ""
    #: True when the source slices were not uniformly spaced and were interpolated onto a uniform grid;
    #: ``slice_refs`` then give the nearest source slice of each resampled slice.
    resampled: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.voxels.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def affine_ras(self) -> npt.NDArray[np.float64]:
        out: npt.NDArray[np.float64] = LPS_TO_RAS @ self.affine
        return out

    @property
    def first_header(self) -> Dataset:
        return self.source_headers[0]
