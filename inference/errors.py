"""The errors of segmentation, each with the stable reason code the audit log and the CLI show."""

from __future__ import annotations

from config.errors import SegNodeError

__all__ = [
    "DeviceUnavailableError",
    "InferenceError",
    "InputTooLargeError",
    "InputTooSmallError",
    "InvalidRoiError",
    "OutOfMemoryError",
]


class InferenceError(SegNodeError):
    """Segmentation could not be done."""

    reason = "inference_failed"


class InputTooSmallError(InferenceError):
    """The image is not 3D (fewer than 2 voxels along an axis), or has no extent at the model spacing."""

    reason = "input_too_small"


class InputTooLargeError(InferenceError):
    """The image has more voxels (as given, or at the model spacing) than ``inference.max_voxels``."""

    reason = "input_too_large"


class DeviceUnavailableError(InferenceError):
    """The device asked for (``inference.device``) does not exist on this machine, or is misspelt."""

    reason = "device_unavailable"


class OutOfMemoryError(InferenceError):
    """A part model ran out of memory on every device the fallbacks allow."""

    reason = "out_of_memory"


class InvalidRoiError(InferenceError):
    """``roi_subset`` is empty, names unknown structures, or is asked of a task other than ``total_mr``."""

    reason = "invalid_roi_subset"
