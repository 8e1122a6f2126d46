"""The checks of an image and its request before any model runs: each failure is an
:class:`inference.errors.InferenceError` with its reason code and a message that names the problem."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inference import preprocess
from inference.errors import InferenceError, InputTooLargeError, InputTooSmallError, InvalidRoiError
from inference.registry import Task

__all__ = ["check_image", "check_roi", "check_size"]


def check_image(data: np.ndarray, affine: npt.NDArray[np.float64]) -> None:
    """:class:`InputTooSmallError` unless ``data`` is 3D with at least 2 voxels per axis;
    :class:`InferenceError` (``invalid_geometry``) unless ``affine`` is a finite, invertible 4x4 matrix."""
    if data.ndim != 3:
        raise InputTooSmallError(f"a 3D image is needed, got an array of shape {data.shape}")
    if min(data.shape) < 2:
        raise InputTooSmallError(
            f"image of shape {data.shape} is 2D (an axis has fewer than 2 voxels); a 3D stack is needed"
        )
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InferenceError("the affine must be a finite, invertible 4x4 matrix", reason="invalid_geometry")


def check_size(
    shape: tuple[int, ...], affine_ras: npt.NDArray[np.float64], spacing: float, max_voxels: int
) -> None:
    """:class:`InputTooSmallError` when the image has no extent at the model ``spacing`` (mm);
    :class:`InputTooLargeError` when it has more than ``max_voxels`` voxels, as given or at that spacing."""
    zooms = preprocess.header_zooms(affine_ras)
    model_shape = tuple(int(round(n * z / spacing)) for n, z in zip(shape, zooms, strict=True))
    if min(model_shape) < 1:
        raise InputTooSmallError(
            f"image of shape {shape} with voxel size {tuple(float(z) for z in zooms)} mm has no "
            f"extent at the model spacing of {spacing} mm"
        )
    n_voxels = int(np.prod(model_shape))
    if n_voxels > max_voxels or int(np.prod(shape)) > max_voxels:
        raise InputTooLargeError(
            f"image of shape {shape} is {n_voxels} voxels at {spacing} mm; the limit is "
            f"{max_voxels} (inference.max_voxels)"
        )


def check_roi(task: Task, roi_subset: Sequence[str] | None) -> tuple[str, ...] | None:
    """``roi_subset`` without repeats (``None`` when not given); :class:`InvalidRoiError` when it is empty,
    names structures ``task`` does not have, or is given for a task other than ``total_mr``."""
    if roi_subset is None:
        return None
    if task.name != "total_mr":
        raise InvalidRoiError(f"roi_subset only works with task total_mr, not {task.name}")
    roi = tuple(dict.fromkeys(roi_subset))
    if not roi:
        raise InvalidRoiError("roi_subset is empty")
    unknown = [name for name in roi if name not in task.label_of]
    if unknown:
        raise InvalidRoiError(f"unknown structures in roi_subset for {task.name}: {', '.join(unknown)}")
    return roi
