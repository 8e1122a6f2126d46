"""What the derived objects beside the SEG share (volumetry SR, overlay images, RTSTRUCT): UIDs derived from
what determines their content, the patient and study attributes copied through the one sanitiser, the
equipment that made them, and text fit for DICOM string elements.

Every derived object of a stack is derived from the same identity as the stack's SEG: the SEG's SOP Instance
UID (:func:`dicom_node.outputs.seg.seg_uids`), a function of the source series, the stack, the task, the
algorithm and the SEG settings. A derived object's UIDs add its kind and the fingerprint of its own
settings, so that encoding the same stack again gives the same UIDs (a re-run replaces the objects in the
PACS instead of adding new ones), whether the SEG itself is sent or not.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, cached_property
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, generate_uid

from config.errors import SegNodeError
from conversion.volume import Volume
from dicom_node.outputs.derived_attributes import CopiedAttributes, root_attributes, sanitize_source
from dicom_node.outputs.seg_options import SegOptions, seg_uids
from dicom_node.outputs.seg_segments import AlgorithmInfo, SegmentSpec

logger = logging.getLogger(__name__)

#: The words every derived object carries in its header (and the overlay images in their pixels).
NOT_FOR_DIAGNOSIS = "AI-generated, not for diagnostic use"


class OutputKind(StrEnum):
    """The DICOM objects a route can ask for."""

    SEG = "seg"
    SR = "sr"
    OVERLAY = "overlay"
    RTSTRUCT = "rtstruct"


class DerivedEncodingError(SegNodeError):
    """A derived object (SR, overlay, RTSTRUCT) cannot be produced from the given inputs."""

    reason = "output_encoding_failed"


@dataclass(frozen=True)
class DerivedContext:
    """The stack and settings a derived object is made for."""

    volume: Volume
    algorithm: AlgorithmInfo
    options: SegOptions

    @property
    def where(self) -> str:
        label = f" stack {self.volume.stack_label}" if self.volume.stack_label else ""
        return f"series {self.volume.series_instance_uid}{label}"

    @cached_property
    def identity(self) -> str:
        """The SOP Instance UID the stack's SEG has (or would have) with these settings."""
        return seg_uids(self.volume, self.algorithm, self.options)[1]

    def uid(self, kind: OutputKind, part: str, settings: Mapping[str, Any] | None = None) -> str:
        """A UID of a derived object: ``kind`` (``sr``...), ``part`` (``series``, ``instance-3``...) and the
        fingerprint of the object's own ``settings`` on top of the SEG's identity."""
        prefix = self.options.uid_root or PYDICOM_ROOT_UID
        if not prefix.endswith("."):
            prefix += "."
        fingerprint = fingerprint_of(settings or {})
        return str(generate_uid(prefix, entropy_srcs=[f"segnode-{kind}-{part}", self.identity, fingerprint]))

    def source_header(self, iod: str) -> Dataset:
        """The first source header with the Patient and Study modules of ``iod`` (a key of the standard's
        module tables, e.g. ``"comprehensive-3d-sr"``) made valid by the sanitiser; corrections are logged
        (keyword and rule, never the value)."""
        copied = CopiedAttributes.of_iod(iod, ("Patient", "Study"))
        sanitized = sanitize_source(self.volume.first_header, copied, self.where)
        for correction in sanitized.corrections:
            logger.info("%s: source attribute corrected for %s: %s", self.where, iod, correction)
        return sanitized.header

    def patient_and_study(self, iod: str) -> Dataset:
        """The Patient and Study modules of ``iod`` (with Specific Character Set) from the sanitised first
        source header, as a dataset to copy into a derived object built without highdicom."""
        copied = CopiedAttributes.of_iod(iod, ("Patient", "Study"))
        header = self.source_header(iod)
        out = Dataset()
        if "SpecificCharacterSet" in header:
            out.SpecificCharacterSet = header.SpecificCharacterSet
        for module in copied.modules:
            for keyword, _ in root_attributes(module.key):
                if keyword in header:
                    out[keyword] = header[keyword]
        return out

    def series_number(self, offset: int) -> int:
        source = self.volume.first_header.get("SeriesNumber")
        base = int(source) if source not in (None, "") else 0
        return base + offset


@cache
def opencv() -> ModuleType:
    """OpenCV (``cv2``) for the derived objects, its parallel loops off for the process
    (``cv2.setNumThreads(1)``; only these modules use OpenCV): on images of a slice's size they cost more
    CPU time, in handing work to OpenCV's threads and in the threads' waiting, than they save in wall time,
    and the node's encode threads already make stacks side by side."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


#: Voxels per OpenCV histogram in :func:`label_counts`: its float32 bins stay exact below 2**24.
_HISTOGRAM_VOXELS = 1 << 22


def label_counts(label_map: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.intp]:
    """Voxels per label value (index) of a label map, up to its largest label. An 8-bit contiguous map (the
    node's) is counted by OpenCV's histogram, 4 Mi voxels at a time (exact: no bin of a part reaches 2**24),
    several times faster than ``np.bincount``, which makes each voxel an 8-byte index first; any other map
    by ``np.bincount`` a slab at a time along the first axis (no temporary of the label map's size)."""
    if label_map.dtype == np.uint8 and label_map.flags.c_contiguous and label_map.size:
        cv2 = opencv()

        flat = label_map.reshape(-1)
        histogram = np.zeros(256, dtype=np.intp)
        for start in range(0, flat.size, _HISTOGRAM_VOXELS):
            part = flat[start : start + _HISTOGRAM_VOXELS]
            image = part.reshape(-1, 1024) if part.size % 1024 == 0 else part.reshape(1, -1)
            histogram += cv2.calcHist([image], [0], None, [256], [0, 256]).reshape(-1).astype(np.intp)
        nonzero = np.flatnonzero(histogram)
        return histogram[: int(nonzero[-1]) + 1]
    counts = np.zeros(1, dtype=np.intp)
    rows = max(1, (1 << 18) // max(1, int(np.prod(label_map.shape[1:]))))
    for start in range(0, label_map.shape[0], rows):
        found = np.bincount(np.ravel(label_map[start : start + rows]))
        if len(found) > len(counts):
            found[: len(counts)] += counts
            counts = found
        else:
            counts[: len(found)] += found
    return counts


#: The dtypes OpenCV transposes.
_CV_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32))


def slices_of(stack: npt.NDArray[Any], start: int, stop: int) -> npt.NDArray[Any]:
    """Slices ``start:stop`` of a (columns, rows, slices) stack as one contiguous (slices, rows, columns)
    array. numpy's copy of the transposed view reads the stack with a stride of a slice's length; OpenCV's
    2D transposes (one from (columns x rows, slices) to (slices, columns x rows), then one per slice) do
    the same several times faster, for the dtypes it takes. A C-contiguous stack is read in place (its
    (columns x rows, slices) view, rows of ``stop - start`` values a slice's length apart: OpenCV takes
    row strides); a stack whose slices are already so (a Fortran-ordered one, as ``load_series`` makes it)
    gives a view of them; any other is copied to a contiguous chunk first."""
    columns, rows, total = stack.shape
    ordered = stack[:, :, start:stop].transpose(2, 1, 0)
    if ordered.flags.c_contiguous:  # a Fortran-ordered stack holds its slices so already: no copy
        return ordered
    if stack.dtype not in _CV_DTYPES or ordered.size == 0:
        return np.ascontiguousarray(ordered)
    cv2 = opencv()

    if stack.flags.c_contiguous:
        flat = stack.reshape(columns * rows, total)[:, start:stop]
    else:
        flat = np.ascontiguousarray(stack[:, :, start:stop]).reshape(columns * rows, -1)
    count = flat.shape[1]
    by_slice = cv2.transpose(flat)
    out = np.empty((count, rows, columns), dtype=stack.dtype)
    for n in range(count):
        out[n] = cv2.transpose(by_slice[n].reshape(columns, rows))
    return out


def labels_present(
    context: DerivedContext,
    label_map: npt.NDArray[np.integer[Any]],
    segments: Mapping[int, SegmentSpec],
    counted: Sequence[int] | None = None,
) -> list[int]:
    """The labels in ``label_map`` (0 left out), in increasing order; ``counted``: those labels where the
    caller has counted them already (the stack's :class:`~dicom_node.outputs.volumetry.Volumetry`), so
    that the label map is not read again.

    Raises :class:`DerivedEncodingError` when the label map is not on the grid of ``context.volume`` or a
    label has no entry in ``segments``.
    """
    volume = context.volume
    if label_map.shape != volume.shape:
        raise DerivedEncodingError(f"{context.where}: label map shape {label_map.shape} != {volume.shape}")
    if counted is None:
        present = [int(v) for v in np.flatnonzero(label_counts(np.asarray(label_map))) if v]
    else:
        present = sorted({int(v) for v in counted if v})
    missing = [v for v in present if v not in segments]
    if missing:
        raise DerivedEncodingError(f"{context.where}: labels {missing} have no catalog entry")
    return present


def set_file_meta(dataset: Dataset, sop_class_uid: str, sop_instance_uid: str) -> None:
    """The file meta information of a newly made object, encoded in Explicit VR Little Endian."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta


def fingerprint_of(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of settings that change an object's content."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def lo(text: str, limit: int = 64) -> str:
    """A value fit for a LO (or shorter) element: no backslash or control characters, single spaces."""
    return " ".join(re.sub(r"[\\\x00-\x1f]", " ", text).split())[:limit]


def set_equipment(dataset: Dataset, options: SegOptions) -> None:
    """General Equipment of the node that made the object."""
    dataset.Manufacturer = lo(options.manufacturer)
    dataset.ManufacturerModelName = lo(options.manufacturer_model_name)
    dataset.SoftwareVersions = lo(options.software_version)
    dataset.DeviceSerialNumber = lo(options.device_serial_number)


def set_creation_time(dataset: Dataset, now: datetime.datetime | None = None) -> None:
    """Instance Creation, Series and Content Date/Time of a newly made object."""
    now = now or datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for prefix in ("InstanceCreation", "Series", "Content"):
        setattr(dataset, f"{prefix}Date", date)
        setattr(dataset, f"{prefix}Time", time)
