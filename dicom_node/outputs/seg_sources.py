"""The source images as the SEG sees them: plane positions, orientation and spacing from the headers
(cross-checked against the Volume), the attributes the SEG copies made valid (:data:`SEG_COPIED`, the
sanitiser of :mod:`dicom_node.outputs.derived_attributes`: tolerant reading, strict writing), headers fixed
up for highdicom, and the source references of the SEG's frames."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from conversion.volume import SliceRef, Volume
from dicom_node.outputs.attribute_values import Correction
from dicom_node.outputs.derived_attributes import (
    CopiedAttributes,
    check_uids,
    private_copy,
    root_attributes,
    sanitize_source,
)
from dicom_node.outputs.errors import SegEncodingError

logger = logging.getLogger(__name__)


def frame_position(header: Dataset, ref: SliceRef) -> list[float]:
    """Image Position (Patient) of a source image or of one frame of a multi-frame source."""
    if ref.frame_number is None:
        if "ImagePositionPatient" not in header:
            raise SegEncodingError(f"source instance {ref.sop_instance_uid} has no ImagePositionPatient")
        return [float(v) for v in header.ImagePositionPatient]
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or not 1 <= ref.frame_number <= len(per_frame):
        raise SegEncodingError(
            f"source instance {ref.sop_instance_uid} has no per-frame functional group for frame "
            f"{ref.frame_number}"
        )
    item = per_frame[ref.frame_number - 1]
    if "PlanePositionSequence" not in item:
        shared = header.get("SharedFunctionalGroupsSequence")
        if shared and "PlanePositionSequence" in shared[0]:
            item = shared[0]
        else:
            raise SegEncodingError(
                f"source instance {ref.sop_instance_uid} frame {ref.frame_number}: no PlanePositionSequence"
            )
    return [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]


def check_geometry(volume: Volume, positions: npt.NDArray[np.float64]) -> None:
    """The header positions must be the Volume's slice origins (the contract between conversion and us)."""
    k = np.arange(len(positions), dtype=np.float64)
    expected = volume.affine[:3, 3][None, :] + k[:, None] * volume.affine[:3, 2][None, :]
    # Slices may be irregularly spaced: compare only within-plane offsets and the ordering along the normal.
    row_dir = volume.affine[:3, 0] / np.linalg.norm(volume.affine[:3, 0])
    col_dir = volume.affine[:3, 1] / np.linalg.norm(volume.affine[:3, 1])
    normal = np.cross(row_dir, col_dir)
    offsets = positions - expected
    in_plane = np.abs(offsets @ np.stack([row_dir, col_dir], axis=1))
    along = positions @ normal
    step = float(np.linalg.norm(volume.affine[:3, 2]))
    tolerance = max(0.05 * step, 0.01)
    if float(in_plane.max(initial=0.0)) > tolerance or (len(along) > 1 and not np.all(np.diff(along) > 0)):
        raise SegEncodingError(
            f"series {volume.series_instance_uid}: the slice positions of the source headers do not "
            "follow the Volume affine (slices out of order or in-plane offset); refusing to write a "
            "misaligned SEG"
        )


def orientation_and_spacing(volume: Volume) -> tuple[list[float], list[float]]:
    """Image Orientation (Patient) and Pixel Spacing (row, column) from the Volume affine."""
    col0 = volume.affine[:3, 0]
    col1 = volume.affine[:3, 1]
    column_spacing = float(np.linalg.norm(col0))
    row_spacing = float(np.linalg.norm(col1))
    orientation = [*(col0 / column_spacing).tolist(), *(col1 / row_spacing).tolist()]
    return [round(v, 8) for v in orientation], [round(row_spacing, 8), round(column_spacing, 8)]


def slice_thickness(volume: Volume) -> float:
    """Slice Thickness of the source (classic header, or the shared Pixel Measures of a multi-frame one);
    the slice spacing when the source gives none."""
    first = volume.first_header
    thickness = first.get("SliceThickness")
    if thickness in (None, "") and "SharedFunctionalGroupsSequence" in first:
        measures = first.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        thickness = measures[0].get("SliceThickness") if measures else None
    return float(thickness) if thickness not in (None, "") else float(volume.spacing[2])


#: What a SEG takes from its first source image: the modules of the Patient and Study IEs of the
#: Segmentation IOD and its Specimen module (highdicom copies them whole), and single attributes with the
#: Type that applies to them: the Frame of Reference, the UIDs its references carry, what
#: :mod:`dicom_node.outputs.seg_options` reads (Series Number, Series Description, Slice Thickness; read,
#: not copied: Type 3), Lossy Image Compression, and the acquisition equipment highdicom copies into the
#: Contributing Equipment Sequence (an invalid one leaves that item out: Type 3).
SEG_COPIED = CopiedAttributes.of_iod(
    "segmentation",
    ("Patient", "Study"),
    modules=("specimen",),
    attributes=(
        ("StudyInstanceUID", "1"),
        ("SeriesInstanceUID", "1"),
        ("SOPClassUID", "1"),
        ("SOPInstanceUID", "1"),
        ("FrameOfReferenceUID", "1"),
        ("PositionReferenceIndicator", "2"),
        ("SeriesNumber", "3"),
        ("SeriesDescription", "3"),
        ("SliceThickness", "3"),
        ("LossyImageCompression", "3"),
        ("LossyImageCompressionRatio", "3"),
        ("LossyImageCompressionMethod", "3"),
        ("Manufacturer", "3"),
        ("ManufacturerModelName", "3"),
        ("SoftwareVersions", "3"),
        ("DeviceSerialNumber", "3"),
        ("InstitutionName", "3"),
        ("InstitutionalDepartmentName", "3"),
        ("InstitutionAddress", "3"),
        ("StationName", "3"),
        ("AcquisitionDateTime", "3"),
        ("AcquisitionDate", "3"),
        ("AcquisitionTime", "3"),
    ),
)
#: Attributes the SEG carries at its root as the source has them (the copied modules, the Frame of
#: Reference, Lossy Image Compression); others of :data:`SEG_COPIED` are read, not copied (Series Number)
#: or copied into items (acquisition equipment), and the SEG's own attributes of the same name are SegNode's.
SEG_ROOT_COPIES = frozenset(
    {keyword for module in SEG_COPIED.modules for keyword, _ in root_attributes(module.key)}
    | {
        "StudyInstanceUID",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    }
)
#: UIDs of every source image that the SEG's references carry unchanged.
REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


def sanitized_volume(volume: Volume, where: str) -> tuple[Volume, tuple[Correction, ...]]:
    """The volume with its first source header made valid for copying into the SEG (the sanitiser of
    :mod:`dicom_node.outputs.derived_attributes`), and the corrections made; the UIDs that the SEG's
    references carry are checked in every source header. Raises
    :class:`~dicom_node.outputs.derived_attributes.SourceAttributeError` for a fault that cannot be
    corrected."""
    for header in volume.source_headers:
        check_uids(header, REFERENCED_UIDS, where, SEG_COPIED.iod)
    sanitized = sanitize_source(volume.first_header, SEG_COPIED, where)
    headers = [sanitized.header, *volume.source_headers[1:]]
    return dataclasses.replace(volume, source_headers=headers), sanitized.corrections


def source_for_highdicom(header: Dataset) -> Dataset:
    """The source header as highdicom reads it (see :func:`_with_shared_geometry`)."""
    return _with_shared_geometry(header)


#: Functional group macros that highdicom reads from the shared group of a multi-frame source.
_SHAREABLE_GROUPS = ("PixelMeasuresSequence", "PlaneOrientationSequence")


def _with_shared_geometry(header: Dataset) -> Dataset:
    """A multi-frame header whose Pixel Measures / Plane Orientation are only per-frame (Philips) gets them
    in the shared group.

    highdicom reads them from the shared functional groups. When every frame has the same value, a copy of
    the header with the macro moved to the shared group says the same thing. Other headers are returned
    unchanged (highdicom then reports what it cannot handle).
    """
    shared = header.get("SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not shared or not per_frame:
        return header
    moved: dict[str, Dataset] = {}
    for keyword in _SHAREABLE_GROUPS:
        if keyword in shared[0]:
            continue
        values = [item.get(keyword) for item in per_frame]
        if any(v is None or len(v) != 1 for v in values):
            continue
        first = values[0][0]
        if all(v[0] == first for v in values[1:]):
            moved[keyword] = first
    if not moved:
        return header
    copy = private_copy(header)
    copy.SharedFunctionalGroupsSequence = [Dataset(shared[0])]
    for keyword, value in moved.items():
        setattr(copy.SharedFunctionalGroupsSequence[0], keyword, [value])
    return copy


def restrict_frame_references(seg: Dataset, volume: Volume, positions: npt.NDArray[np.float64]) -> None:
    """Make every SEG frame reference exactly the source image/frame of its volume slice.

    highdicom matches frames to sources by position; where a multi-frame source holds several frames at one
    position (e.g. magnitude and phase), it references all of them. The Volume knows which one was used.
    """
    for item in seg.PerFrameFunctionalGroupsSequence:
        position = np.asarray([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.argmin(np.linalg.norm(positions - position[None, :], axis=1)))
        ref = volume.slice_refs[k]
        derivation = item.get("DerivationImageSequence")
        if not derivation:
            continue
        sources = derivation[0].SourceImageSequence
        if len(sources) <= 1:
            continue
        keep = [
            s
            for s in sources
            if s.ReferencedSOPInstanceUID == ref.sop_instance_uid
            and (ref.frame_number is None or ref.frame_number in _frame_numbers(s))
        ]
        if keep:
            for s in keep:
                if ref.frame_number is not None:
                    s.ReferencedFrameNumber = ref.frame_number
            derivation[0].SourceImageSequence = keep[:1]


def _frame_numbers(item: Dataset) -> list[int]:
    value = item.get("ReferencedFrameNumber")
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return [int(v) for v in value]
    return [int(value)]


def check_references(seg: Dataset, where: str) -> None:
    """Every frame must reference a source image: a SEG whose frames float free is not sent."""
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        derivation = item.get("DerivationImageSequence")
        if not derivation or not derivation[0].get("SourceImageSequence"):
            raise SegEncodingError(f"{where}: SEG frame {index} references no source image")
