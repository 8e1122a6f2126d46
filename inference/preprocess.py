"""Pre- and post-processing of TotalSegmentator 2.18 for MRI, on arrays (no NIfTI files).

The steps and their exact semantics (``totalsegmentator/nnunet.py``, ``resampling.py``, ``alignment.py``,
``cropping.py`` of TotalSegmentator 2.18.0):

* reorientation to the closest canonical (RAS+) orientation: ``nibabel.as_closest_canonical`` (axis
  permutation and flips from ``io_orientation``; no interpolation), undone with the inverse orientation;
* resampling of the image to the model spacing: ``scipy.ndimage.zoom(data, zoom, order=1, mode="nearest")``
  (corner-aligned: output voxel ``k`` samples input coordinate ``k * (n_in - 1) / (n_out - 1)``) with
  ``zoom = header_zooms / spacing``, where the zooms are the voxel sizes as a NIfTI header stores them
  (float32); the output shape is ``round(shape * zoom)``; the result is cast to int32 (truncation toward 0).
  When the zooms already equal the model spacing nothing is resampled and nothing is cast;
* the label map is resampled back with ``scipy.ndimage.zoom(labels, target_shape / shape, order=0,
  mode="nearest")`` (nearest neighbour), then the orientation is undone;
* with ``roi_subset``, the image is first cast to int32 and cropped to the bounding box of the structures
  found by the 3 mm model, grown by 20 mm per side (``int(20 / zoom)`` voxels).

On a CUDA device the two resampling steps run in torch (:mod:`inference.gpu_resample`) with the same
arithmetic; on CPU they run in scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from nibabel import orientations as _ornt
from scipy import ndimage

#: Element type of a label map (kept through reorientation and nearest-neighbour resampling).
T = TypeVar("T", bound=np.generic)

#: TotalSegmentator's margin around the ROI crop for ``roi_subset`` (mm per side).
ROI_CROP_ADDON_MM = (20.0, 20.0, 20.0)


def header_zooms(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Voxel sizes of ``affine`` as a NIfTI header stores them (column norms, float32)."""
    zooms: npt.NDArray[np.float32] = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).astype(np.float32)
    return zooms


@dataclass(frozen=True)
class Canonical:
    """An array reoriented to the closest canonical (RAS+) orientation, and how to undo it."""

    data: np.ndarray
    affine: npt.NDArray[np.float64]
    #: nibabel orientation of the source array (``io_orientation`` of its RAS affine).
    source_ornt: npt.NDArray[np.float64]


def to_canonical(data: np.ndarray, affine_ras: npt.NDArray[np.float64]) -> Canonical:
    """``nibabel.as_closest_canonical`` on an array with its RAS affine."""
    ornt: npt.NDArray[np.float64] = _ornt.io_orientation(affine_ras)
    if np.array_equal(ornt, _ornt.axcodes2ornt("RAS")):
        return Canonical(data, affine_ras, ornt)
    out: np.ndarray = _ornt.apply_orientation(data, ornt)
    to_source: npt.NDArray[np.float64] = _ornt.inv_ornt_aff(ornt, data.shape)
    return Canonical(out, affine_ras @ to_source, ornt)


def from_canonical(data: npt.NDArray[T], source_ornt: npt.NDArray[np.float64]) -> npt.NDArray[T]:
    """Undo :func:`to_canonical` (TotalSegmentator's ``undo_canonical``)."""
    back: npt.NDArray[np.float64] = _ornt.ornt_transform(_ornt.axcodes2ornt("RAS"), source_ornt)
    if np.array_equal(back, _ornt.axcodes2ornt("RAS")):
        return data
    out: npt.NDArray[T] = np.ascontiguousarray(_ornt.apply_orientation(data, back))
    return out


def zoom_factors(zooms: npt.NDArray[np.float32], spacing_mm: float) -> npt.NDArray[np.float64] | None:
    """TotalSegmentator's zoom ``zooms / spacing``; ``None`` where the image is already at the spacing."""
    target = np.array([spacing_mm] * 3, dtype=np.float64)
    if np.array_equal(zooms, target):
        return None
    out: npt.NDArray[np.float64] = zooms / target
    return out


def zoomed_shape(shape: tuple[int, ...], zoom: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """Output shape of ``scipy.ndimage.zoom`` for ``zoom``."""
    s = tuple(int(round(n * z)) for n, z in zip(shape, zoom, strict=True))
    return (s[0], s[1], s[2])


def resample_image_cpu(data: np.ndarray, zoom: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """Order-1 zoom of the float64 image, cast to int32 (TotalSegmentator's ``change_spacing``)."""
    out = ndimage.zoom(np.asarray(data, dtype=np.float64), zoom, mode="nearest", order=1)
    result: npt.NDArray[np.int32] = out.astype(np.int32)
    return result


def resample_labels_cpu(labels: npt.NDArray[T], target_shape: tuple[int, int, int]) -> npt.NDArray[T]:
    """Nearest-neighbour zoom of a label map to ``target_shape`` (TotalSegmentator's way back)."""
    if tuple(labels.shape) == tuple(target_shape):
        return labels
    zoom = np.array(target_shape, dtype=np.float64) / np.array(labels.shape, dtype=np.float64)
    out: npt.NDArray[T] = ndimage.zoom(labels, zoom, mode="nearest", order=0)
    return out


def roi_bbox(
    mask: np.ndarray, zooms: npt.NDArray[np.float32], addon_mm: tuple[float, float, float] = ROI_CROP_ADDON_MM
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """Bounding box (half-open, per axis) of ``mask`` grown by ``addon_mm``; ``None`` for an empty mask."""
    if not mask.any():
        return None
    addon = (np.array(addon_mm) / zooms).astype(int)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(hit[0]) - int(addon[axis]))
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + int(addon[axis]))
        box.append((lo, hi))
    return (box[0], box[1], box[2])


def crop_affine(affine: npt.NDArray[np.float64], starts: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    out = affine.copy()
    out[:3, 3] = (affine @ np.array([starts[0], starts[1], starts[2], 1.0]))[:3]
    return out


def triple_split_bounds(depth: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """TotalSegmentator's three overlapping z parts of a very large image (margin 20 slices)."""
    third = depth // 3
    margin = 20
    return ((0, third + margin), (third + 1 - margin, third * 2 + margin), (third * 2 + 1 - margin, depth))


def triple_split_merge(parts: list[npt.NDArray[T]], depth: int) -> npt.NDArray[T]:
    """Put the three z parts back together as TotalSegmentator does (it drops the margins)."""
    third = depth // 3
    margin = 20
    shape = (*parts[0].shape[:2], depth)
    out = np.zeros(shape, dtype=parts[0].dtype)
    out[:, :, :third] = parts[0][:, :, :-margin]
    out[:, :, third : third * 2] = parts[1][:, :, margin - 1 : -margin]
    out[:, :, third * 2 :] = parts[2][:, :, margin - 1 :]
    return out
