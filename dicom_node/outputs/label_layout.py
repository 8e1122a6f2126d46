"""A stack's label map in slice order, with the voxels per label and each label's bounding box: what the
volumetry, the overlay and the RTSTRUCT all read of the same label map, made once per stack where the route
asks for an overlay or an RTSTRUCT (:func:`label_layout`).

The label map is held (columns, rows, slices), as the Volume holds its voxels; the overlay and the RTSTRUCT
both read it slice by slice, as (slices, rows, columns). For an 8-bit map held in C order (the node's) one
OpenCV histogram per slice of the slice-ordered map gives at once the voxels per label (their sum) and the
slices each label is on; the histograms of each row plane and column plane give the rows and columns, so
the boxes come from three passes of histograms, and the volumetry's own count of the map and its search of
the six faces for labels on the border (a box that reaches a face) are not needed. Any other map: the
counts of :func:`~dicom_node.outputs.derived.label_counts` and the boxes of ``scipy.ndimage.find_objects``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.outputs.derived import DerivedEncodingError, label_counts, opencv, slices_of

#: A label's bounding box in the slice-ordered map: (slices, rows, columns).
Box = tuple[slice, slice, slice]

#: Slices of the label map put in slice order per pass (see :func:`slice_order`).
_CHUNK = 32


def slice_order(label_map: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The (columns, rows, slices) label map as a contiguous (slices, rows, columns) array, made
    :data:`_CHUNK` slices at a time (OpenCV's transposes: :func:`~dicom_node.outputs.derived.slices_of`),
    so that each structure's box is read row by row and no more than a chunk is held twice."""
    columns, rows, count = label_map.shape
    ordered = np.empty((count, rows, columns), dtype=label_map.dtype)
    for start in range(0, count, _CHUNK):
        ordered[start : start + _CHUNK] = slices_of(label_map, start, start + _CHUNK)
    return ordered


def _histograms(planes: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.intp]:
    """OpenCV's 256-bin histogram of each 8-bit plane (exact: a plane holds fewer than 2**24 values)."""
    cv2 = opencv()

    out = np.zeros((len(planes), 256), dtype=np.intp)
    for n, plane in enumerate(planes):
        out[n] = cv2.calcHist([plane], [0], None, [256], [0, 256]).reshape(-1)
    return out


def _boxes_of(on_axes: Sequence[npt.NDArray[np.bool_]], last: int) -> list[Box | None]:
    """The boxes of labels 1 .. ``last`` from the planes each label is on along the three axes."""
    boxes: list[Box | None] = []
    for label in range(1, last + 1):
        ranges = [np.flatnonzero(on[:, label]) for on in on_axes]
        if not ranges[0].size:
            boxes.append(None)
            continue
        first, second, third = (slice(int(r[0]), int(r[-1]) + 1) for r in ranges)
        boxes.append((first, second, third))
    return boxes


@dataclass(frozen=True)
class LabelLayout:
    """A label map in slice order, its voxels per label value and its labels' boxes."""

    #: The label map's shape, (columns, rows, slices).
    shape: tuple[int, ...]
    #: The label map as (slices, rows, columns), contiguous.
    ordered: npt.NDArray[Any]
    #: Voxels per label value (index), up to the largest label.
    counts: npt.NDArray[np.intp]
    #: The boxes (slices, rows, columns of ``ordered``) of labels 1, 2 ...: ``boxes[label - 1]``, None for
    #: a label absent; as ``scipy.ndimage.find_objects`` gives them.
    boxes: tuple[Box | None, ...]

    def boxes_up_to(self, last: int) -> list[Box | None]:
        """The boxes of labels 1 .. ``last`` (None beyond the largest label)."""
        return [self.boxes[n] if n < len(self.boxes) else None for n in range(last)]

    def on_border(self) -> set[int]:
        """Labels with a voxel on one of the six faces of the stack: their box reaches the face."""
        sizes = self.ordered.shape
        return {
            label
            for label, box in enumerate(self.boxes, start=1)
            if box is not None and any(b.start == 0 or b.stop == n for b, n in zip(box, sizes, strict=True))
        }

    def check(self, label_map: npt.NDArray[Any], where: str) -> None:
        """Refuse a layout made of a label map of another shape than ``label_map``."""
        if tuple(self.shape) != tuple(label_map.shape):
            raise DerivedEncodingError(
                f"{where}: the label layout is of a map of shape {tuple(self.shape)}, the label map "
                f"{tuple(label_map.shape)}"
            )


def label_layout(label_map: npt.NDArray[np.integer[Any]]) -> LabelLayout:
    """The :class:`LabelLayout` of a (columns, rows, slices) label map (see the module's description)."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise DerivedEncodingError(f"a label map has 3 axes, not {label_map.ndim} (shape {label_map.shape})")
    ordered = slice_order(label_map)
    count, rows, columns = ordered.shape
    histogrammed = label_map.dtype == np.uint8 and label_map.flags.c_contiguous
    if histogrammed and count and 0 < rows * columns < 1 << 24:
        histograms = _histograms([ordered[k] for k in range(count)])
        counts = histograms.sum(axis=0)
        by_slice = histograms > 0
        nonzero = np.flatnonzero(counts)
        counts = counts[: int(nonzero[-1]) + 1]
        by_row = _histograms([ordered[:, r, :] for r in range(rows)]) > 0
        by_column = _histograms([label_map[c] for c in range(columns)]) > 0
        boxes = _boxes_of((by_slice, by_row, by_column), len(counts) - 1)
        return LabelLayout(tuple(label_map.shape), ordered, counts, tuple(boxes))
    from scipy import ndimage

    counts = label_counts(label_map)
    boxes = list(ndimage.find_objects(ordered, max_label=len(counts) - 1)) if len(counts) > 1 else []
    return LabelLayout(tuple(label_map.shape), ordered, counts, tuple(boxes))
