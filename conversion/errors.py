"""Why a series cannot be segmented: one exception type with stable reason codes."""

from __future__ import annotations

from enum import StrEnum

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
