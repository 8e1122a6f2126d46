"""Why a series cannot be segmented: one exception type with stable reason codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from config.errors import SegNodeError


class Reason(StrEnum):
    """Stable reason codes of :class:`NotSegmentableError` (shown in the audit log and the CLI)."""

    #: A stack (or the whole series) holds a single image: there is no volume to segment.
    SINGLE_SLICE = "single_slice"
    #: The series is a localizer / scout / survey (ImageType LOCALIZER, or a localizer description).
    LOCALIZER = "localizer"
    #: The images lie in different orientations and do not form a stack.
    INCONSISTENT_ORIENTATION = "inconsistent_orientation"
    #: Slice positions do not line up along the slice normal (sheared stack) in an MR series.
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    #: Gaps between slices are whole multiples of the slice step: slices are missing.
    MISSING_SLICES = "missing_slices"
    #: Slice spacing varies and the configuration asks to reject such stacks.
    NON_UNIFORM_SPACING = "non_uniform_spacing"
    #: Siemens MOSAIC images (several slices tiled in one image).
    UNSUPPORTED_MOSAIC = "unsupported_mosaic"
    #: Colour or otherwise non-monochrome pixels.
    UNSUPPORTED_PIXELS = "unsupported_pixels"
    #: The pixel data cannot be decoded (no decoder for the transfer syntax, or corrupt data).
    UNDECODABLE_PIXELS = "undecodable_pixels"
    #: No instance of the series carries pixel data (e.g. only RTSTRUCT or SR objects).
    NO_PIXEL_DATA = "no_pixel_data"
    #: The images carry no Image Position / Orientation (Patient) or Pixel Spacing.
    MISSING_GEOMETRY = "missing_geometry"
    #: CT acquired with a tilted gantry (sheared slices).
    GANTRY_TILT = "gantry_tilt"
    #: The instances given belong to more than one series.
    MIXED_SERIES = "mixed_series"
    #: The instances cannot be read as DICOM.
    UNREADABLE = "unreadable"


class NotSegmentableError(SegNodeError):
    """A series (or one of its stacks) cannot be turned into a volume to segment.

    ``reason`` is one of :class:`Reason`; the message names the series (number, description and
    Series Instance UID) in words a PACS administrator understands.
    """

    reason: str = "not_segmentable"

    def __init__(self, message: str, *, reason: Reason, series: str = "", stack_label: str = "") -> None:
        super().__init__(message, reason=str(reason))
        self.series = series
        self.stack_label = stack_label


#: What a PACS administrator can do about a reason (appended where one message sums up several stacks).
ADVICE: dict[str, str] = {
    Reason.SINGLE_SLICE: "there is no volume to segment (route such series to ignore)",
    Reason.MISSING_SLICES: "send the complete series again",
    Reason.NON_UNIFORM_SPACING: "send a reconstruction with evenly spaced slices",
    Reason.INCONSISTENT_GEOMETRY: "the slice positions do not form a volume; check the export of the series",
    Reason.GANTRY_TILT: "tilted CT is not supported",
}

#: How a stack's key dimension is counted (``19 temporal positions``).
_NOUNS = {
    "temporal_position": "temporal positions",
    "b_value": "b-values",
    "echo_number": "echoes",
    "echo_time": "echo times",
    "stack_id": "stacks",
    "acquisition_number": "acquisitions",
    "cardiac_phase": "cardiac phases",
    "repetition": "repetitions",
    "image_type": "image types",
    "trigger_time": "trigger times",
    "orientation": "orientations",
}
_EACH: dict[str, str] = {
    Reason.SINGLE_SLICE: "each a single slice",
    Reason.MISSING_SLICES: "each with missing slices",
    Reason.NON_UNIFORM_SPACING: "each with non-uniform slice spacing",
    Reason.INCONSISTENT_GEOMETRY: "each with slice positions that do not form a volume",
    Reason.GANTRY_TILT: "each tilted",
}


def summarise(failures: Sequence[tuple[Mapping[str, Any], NotSegmentableError]]) -> str:
    """The reasons of several stacks, each reason once: ``19 temporal positions, each a single slice``.

    ``failures`` pairs each stack's key (``{"temporal_position": 3}``) with its error."""
    by_reason: dict[str, list[tuple[Mapping[str, Any], NotSegmentableError]]] = {}
    for key, error in failures:
        by_reason.setdefault(error.reason, []).append((key, error))
    parts = []
    for reason, group in by_reason.items():
        if len(group) == 1:
            parts.append(f"{group[0][1].stack_label or 'one stack'}: {reason.replace('_', ' ')}")
            continue
        dimensions = {k for key, _ in group for k in key}
        if len(dimensions) > 1:
            dimensions.discard("orientation")
        noun = _NOUNS.get(next(iter(dimensions)), "stacks") if len(dimensions) == 1 else "stacks"
        parts.append(f"{len(group)} {noun}, {_EACH.get(reason, reason.replace('_', ' '))}")
    return "; ".join(parts)
