"""Reading the headers of a series once, and describing every frame it holds.

Each source instance is read once with ``stop_before_pixels``; the file offset of its Pixel Data element is
kept so that :mod:`conversion.pixels` can later decode frames straight into the output volume without
parsing the header again. Classic single-frame and Enhanced multi-frame objects are both described as a
flat list of :class:`FrameInfo` (one per 2D image) carrying geometry, rescale and the attributes that can
tell stacks apart.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from conversion.errors import NotSegmentableError, Reason

logger = logging.getLogger(__name__)

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
}
_LOCALIZER_WORDS = re.compile(
    r"\b(localizer|localiser|scout|survey|locator|3[- ]?plane|tri[- ]?pilot)\b", re.I
)


@dataclass
class SourceImage:
    """One instance of the series: its header (no pixel data) and where its pixels are."""

    header: Dataset
    transfer_syntax: UID
    path: Path | None = None
    #: Byte offset of the Pixel Data element's tag in the file (``None`` when the file has none).
    pixel_offset: int | None = None
    #: The complete dataset when the caller passed datasets instead of files.
    dataset: Dataset | None = None
    #: Encoding of the dataset as read (also known for transfer syntaxes pydicom does not know).
    implicit_vr: bool = False
    little_endian: bool = True

    @property
    def has_pixels(self) -> bool:
        if self.dataset is not None:
            return any(t in self.dataset for t in PIXEL_TAGS)
        return self.pixel_offset is not None

    @property
    def name(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"SOP Instance {self.header.get('SOPInstanceUID', '?')}"


@dataclass
class FrameInfo:
    """One 2D image of the series (a single-frame instance or one frame of a multi-frame one)."""

    source: int
    #: 0-based frame index in a multi-frame object, ``None`` for a single-frame object.
    frame: int | None
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int
    rows: int
    columns: int
    orientation: npt.NDArray[np.float64] | None
    position: npt.NDArray[np.float64] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float
    #: Candidate attributes that may tell stacks apart (values are hashable and JSON-friendly).
    attrs: dict[str, Any] = field(default_factory=dict)


def read_sources(items: list[str | os.PathLike[str] | Dataset]) -> list[SourceImage]:
    """Read the header of every item once (files with ``stop_before_pixels``)."""
    sources: list[SourceImage] = []
    for item in items:
        if isinstance(item, Dataset):
            header = Dataset()
            for elem in item:
                if elem.tag not in PIXEL_TAGS:
                    header.add(elem)
            meta = getattr(item, "file_meta", None)
            if meta is not None:
                header.file_meta = meta
            ts = _transfer_syntax(item)
            sources.append(SourceImage(header=header, transfer_syntax=ts, dataset=item))
            continue
        path = Path(item)
        try:
            with path.open("rb") as fp:
                header = dcmread(fp, stop_before_pixels=True, force=True)
                pos = fp.tell()
                tag_bytes = fp.read(4)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
            raise NotSegmentableError(
                f"cannot read {path} as DICOM: {exc}", reason=Reason.UNREADABLE
            ) from exc
        if "SOPClassUID" not in header and "SOPInstanceUID" not in header:
            raise NotSegmentableError(
                f"cannot read {path} as a DICOM instance: it has no SOP Class or SOP Instance UID",
                reason=Reason.UNREADABLE,
            )
        ts = _transfer_syntax(header)
        implicit, little = header.original_encoding
        implicit, little = bool(implicit), little is not False
        offset = pos if len(tag_bytes) == 4 and _is_pixel_tag(tag_bytes, little) else None
        sources.append(
            SourceImage(
                header=header,
                transfer_syntax=ts,
                path=path,
                pixel_offset=offset,
                implicit_vr=implicit,
                little_endian=little,
            )
        )
    return sources


def _is_pixel_tag(tag_bytes: bytes, little_endian: bool) -> bool:
    order: Literal["little", "big"] = "little" if little_endian else "big"
    group = int.from_bytes(tag_bytes[:2], order)
    elem = int.from_bytes(tag_bytes[2:], order)
    return (group << 16 | elem) in PIXEL_TAGS


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    # Datasets received over the network without file meta: fall back on their original encoding.
    implicit, little = getattr(ds, "is_implicit_VR", True), getattr(ds, "is_little_endian", True)
    if implicit:
        return UID("1.2.840.10008.1.2")
    return UID("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")


def is_enhanced(header: Dataset) -> bool:
    """Multi-frame object described by functional groups (not a classic object that carries one)."""
    return str(header.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES or (
        int(header.get("NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in header
    )


def is_mosaic(header: Dataset) -> bool:
    image_type = [str(v).upper() for v in _as_list(header.get("ImageType"))]
    return "MOSAIC" in image_type


def is_localizer(header: Dataset) -> bool:
    image_type = [str(v).upper() for v in _as_list(header.get("ImageType"))]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return True
    text = " ".join(str(header.get(k, "")) for k in ("SeriesDescription", "ProtocolName"))
    return bool(_LOCALIZER_WORDS.search(text.replace("_", " ")))


def series_name(header: Dataset) -> str:
    """How a PACS admin finds the series: number, description and Series Instance UID."""
    number = header.get("SeriesNumber", "")
    desc = str(header.get("SeriesDescription", "") or header.get("ProtocolName", "") or "").strip()
    uid = header.get("SeriesInstanceUID", "?")
    parts = [f"series {number}" if number not in (None, "") else "series"]
    if desc:
        parts.append(f'"{desc}"')
    parts.append(f"({uid})")
    return " ".join(parts)


def frames_of(index: int, src: SourceImage) -> list[FrameInfo]:
    """Describe every 2D image of one source instance."""
    header = src.header
    rows = int(header.get("Rows", 0) or 0)
    columns = int(header.get("Columns", 0) or 0)
    sop = str(header.get("SOPInstanceUID", ""))
    sop_class = str(header.get("SOPClassUID", ""))
    instance_number = _int(header.get("InstanceNumber"), 0)
    if is_enhanced(header):
        return _enhanced_frames(index, header, rows, columns, sop, sop_class, instance_number)
    attrs = _classic_attrs(header)
    return [
        FrameInfo(
            source=index,
            frame=None,
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            instance_number=instance_number,
            rows=rows,
            columns=columns,
            orientation=_floats(header.get("ImageOrientationPatient"), 6),
            position=_floats(header.get("ImagePositionPatient"), 3),
            pixel_spacing=_spacing(header.get("PixelSpacing")),
            slope=_float(header.get("RescaleSlope"), 1.0),
            intercept=_float(header.get("RescaleIntercept"), 0.0),
            attrs=attrs,
        )
    ]


def _enhanced_frames(
    index: int, header: Dataset, rows: int, columns: int, sop: str, sop_class: str, instance_number: int
) -> list[FrameInfo]:
    n_frames = _int(header.get("NumberOfFrames"), 1)
    shared_seq = header.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    top = _classic_attrs(header)
    frames: list[FrameInfo] = []
    for f in range(n_frames):
        group = per_frame[f] if f < len(per_frame) else Dataset()

        def item(keyword: str, group: Dataset = group) -> Dataset | None:
            for ds in (group, shared):
                seq = ds.get(keyword)
                if seq:
                    found: Dataset = seq[0]
                    return found
            return None

        plane_pos = item("PlanePositionSequence")
        plane_ori = item("PlaneOrientationSequence")
        measures = item("PixelMeasuresSequence")
        transform = item("PixelValueTransformationSequence")
        content = item("FrameContentSequence")
        frame_type = item("MRImageFrameTypeSequence") or item("CTImageFrameTypeSequence")
        diffusion = item("MRDiffusionSequence")
        echo = item("MREchoSequence")
        cardiac = item("CardiacSynchronizationSequence")
        attrs = dict(top)
        if frame_type is not None and "FrameType" in frame_type:
            attrs["image_type"] = "\\".join(str(v) for v in _as_list(frame_type.FrameType))
        if diffusion is not None and "DiffusionBValue" in diffusion:
            attrs["b_value"] = _number(diffusion.DiffusionBValue)
        if echo is not None and "EffectiveEchoTime" in echo:
            attrs["echo_time"] = _number(echo.EffectiveEchoTime)
        if content is not None:
            if "TemporalPositionIndex" in content:
                attrs["temporal_position"] = _int(content.TemporalPositionIndex, 0)
            if "StackID" in content:
                attrs["stack_id"] = str(content.StackID)
            if "FrameAcquisitionNumber" in content:
                attrs["acquisition_number"] = _int(content.FrameAcquisitionNumber, 0)
        if cardiac is not None and "NominalCardiacTriggerDelayTime" in cardiac:
            attrs["trigger_time"] = _number(cardiac.NominalCardiacTriggerDelayTime)
        frames.append(
            FrameInfo(
                source=index,
                frame=f,
                sop_instance_uid=sop,
                sop_class_uid=sop_class,
                instance_number=instance_number,
                rows=rows,
                columns=columns,
                orientation=_floats(plane_ori.get("ImageOrientationPatient") if plane_ori else None, 6),
                position=_floats(plane_pos.get("ImagePositionPatient") if plane_pos else None, 3),
                pixel_spacing=_spacing(measures.get("PixelSpacing") if measures else None),
                slope=_float(transform.get("RescaleSlope") if transform else header.get("RescaleSlope"), 1.0),
                intercept=_float(
                    transform.get("RescaleIntercept") if transform else header.get("RescaleIntercept"), 0.0
                ),
                attrs=attrs,
            )
        )
    return frames


def _classic_attrs(header: Dataset) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if "ImageType" in header:
        attrs["image_type"] = "\\".join(str(v) for v in _as_list(header.ImageType))
    b_value = diffusion_b_value(header)
    if b_value is not None:
        attrs["b_value"] = b_value
    if header.get("EchoNumbers") not in (None, ""):
        attrs["echo_number"] = _int(_as_list(header.EchoNumbers)[0], 0)
    if header.get("EchoTime") not in (None, ""):
        attrs["echo_time"] = _number(header.EchoTime)
    if header.get("TemporalPositionIdentifier") not in (None, ""):
        attrs["temporal_position"] = _int(header.TemporalPositionIdentifier, 0)
    if header.get("AcquisitionNumber") not in (None, ""):
        attrs["acquisition_number"] = _int(header.AcquisitionNumber, 0)
    if header.get("TriggerTime") not in (None, ""):
        attrs["trigger_time"] = _number(header.TriggerTime)
    return attrs


def diffusion_b_value(header: Dataset) -> float | int | None:
    """The b-value: standard (0018,9087), then Siemens (0019,xx0C), GE (0043,xx39), Philips (2001,xx03)."""
    if header.get("DiffusionBValue") not in (None, ""):
        return _number(header.DiffusionBValue)
    for group, creator, elem in (
        (0x0019, "SIEMENS MR HEADER", 0x0C),
        (0x0043, "GEMS_PARM_01", 0x39),
        (0x2001, "Philips Imaging DD 001", 0x03),
    ):
        value = _private(header, group, creator, elem)
        if value is None:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="ignore").strip("\x00 ")
        first = _as_list(value)[0] if not isinstance(value, str) else value.split("\\")[0]
        try:
            number = float(first)
        except (TypeError, ValueError):
            logger.warning("unreadable private b-value %r in (%04X,xx%02X)", value, group, elem)
            continue
        if group == 0x0043 and number >= 1e9:
            number %= 1e9  # GE encodes a flag in the high digits
        return int(number) if number.is_integer() else number
    return None


def _private(header: Dataset, group: int, creator: str, elem: int) -> Any:
    for block_elem in range(0x10, 0x100):
        tag = (group << 16) | block_elem
        if tag not in header:
            continue
        if str(header[tag].value).strip() == creator:
            data_tag = (group << 16) | (block_elem << 8) | elem
            if data_tag in header:
                return header[data_tag].value
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def _floats(value: Any, n: int) -> npt.NDArray[np.float64] | None:
    values = _as_list(value)
    if len(values) != n:
        return None
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _spacing(value: Any) -> tuple[float, float] | None:
    arr = _floats(value, 2)
    if arr is None or not np.all(arr > 0):
        return None
    return (float(arr[0]), float(arr[1]))


def _float(value: Any, default: float) -> float:
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _number(value: Any) -> float | int:
    number = _float(value, 0.0)
    return int(number) if number.is_integer() else number


def _int(value: Any, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default
