"""What the engine returns: a label map on the source grid and which weights made it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from inference.registry import TOTALSEGMENTATOR_REFERENCE_VERSION, Mode

__all__ = ["ModelInfo", "SegmentationResult"]


@dataclass(frozen=True)
class ModelInfo:
    """Which weights produced a result (for the audit log and the SEG's algorithm identification)."""

    dataset_id: int
    dataset_folder_name: str
    trainer: str
    plans: str
    configuration: str
    fold: int
    spacing_mm: float
    checkpoint_sha256: str
    release: str | None


@dataclass
class SegmentationResult:
    """A label map on the source grid with what made it."""

    #: Same shape as the input voxels; 0 = background, other values as in ``class_map``.
    labels: npt.NDArray[np.uint8]
    #: Label value -> structure name (only the ``roi_subset`` structures when one was asked for).
    class_map: Mapping[int, str]
    #: Registry name of the task that ran (``total_mr``).
    task: str
    mode: Mode
    #: The part models that ran, in the order their outputs were merged.
    models: tuple[ModelInfo, ...]
    #: The torch device the networks ran on (``cpu``, ``cuda:0``).
    device: str
    #: Seconds per stage (``reorient``, ``resample``, ``predict_850`` ..., ``resample_back``, ``total``).
    timings: dict[str, float]
    roi_subset: tuple[str, ...] | None = None
    #: Notable events worth an audit entry (e.g. a GPU out-of-memory retry on the CPU).
    events: list[str] = field(default_factory=list)
    reference: str = f"TotalSegmentator {TOTALSEGMENTATOR_REFERENCE_VERSION} pipeline"

    def present_labels(self) -> list[int]:
        return [int(v) for v in np.unique(self.labels) if v != 0]
