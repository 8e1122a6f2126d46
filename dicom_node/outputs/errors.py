"""Errors of the derived objects (a SEG that cannot be encoded or does not validate)."""

from __future__ import annotations

from config.errors import SegNodeError


class SegEncodingError(SegNodeError):
    """A SEG cannot be produced from the given volume, label map and segment descriptions."""

    reason = "seg_encoding_failed"


class EmptySegmentationError(SegEncodingError):
    """The label map holds no labelled voxel: there is nothing to encode."""

    reason = "empty_segmentation"
