"""DICOM instances -> stacks -> :class:`Volume`, with exact geometry, or a coded reason why not."""

from conversion.errors import NotSegmentableError, Reason
from conversion.export import to_nibabel, to_sitk
from conversion.loader import load_series, plan_series
from conversion.volume import SliceRef, Volume

__all__ = [
    "NotSegmentableError",
    "Reason",
    "SliceRef",
    "Volume",
    "load_series",
    "plan_series",
    "to_nibabel",
    "to_sitk",
]
