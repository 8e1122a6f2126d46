"""Reading the headers of a series once, and describing every frame it holds.

Each source file is read once, its header parsed up to the Pixel Data element (by
:mod:`conversion.dicomscan`, or ``pydicom.dcmread(stop_before_pixels=True)`` for uncommon encodings); the
file offset of its Pixel Data element is kept so that :mod:`conversion.pixels` can later decode frames
straight into the output volume without parsing the header again. Classic single-frame and Enhanced
multi-frame objects are both described as a flat list of :class:`FrameInfo` (one per 2D image) carrying
geometry, rescale and the attributes that can tell stacks apart.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from conversion.dicomscan import read_header, sequence_item_elements, sequence_items
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
    """Read the header of every item once (files up to their Pixel Data element)."""
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
            # One read of the file, then parsing from memory (faster than many small file reads); the
            # bytes are dropped once the header is parsed and pixels are read again at their offset.
            data = path.read_bytes()
            scanned = read_header(data, str(path))
            if scanned is not None:
                header, offset = scanned
            else:  # uncommon encodings: pydicom's tolerant reader
                buffer = io.BytesIO(data)
                header = dcmread(buffer, stop_before_pixels=True, force=True)
                pos = buffer.tell()
                offset = (
                    pos
                    if _is_pixel_tag(data[pos : pos + 4], header.original_encoding[1] is not False)
                    else None
                )
                del buffer
            del data
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, struct.error) as exc:
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
    if len(tag_bytes) != 4:
        return False
    order: Literal["little", "big"] = "little" if little_endian else "big"
    group = int.from_bytes(tag_bytes[:2], order)
    elem = int.from_bytes(tag_bytes[2:], order)
    return (group << 16 | elem) in PIXEL_TAGS


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = text_value(meta, 0x00020010) if meta is not None else None  # raw text: no UI validation
    if ts:
        return UID(ts)
    # Datasets received over the network without file meta: fall back on their original encoding.
    implicit, little = ds.original_encoding
    if implicit is None or implicit:
        return UID("1.2.840.10008.1.2")
    return UID("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")


def is_enhanced(header: Dataset) -> bool:
    """Multi-frame object described by functional groups (not a classic object that carries one)."""
    return (text_value(header, 0x00080016) or "") in ENHANCED_SOP_CLASSES or (
        _int(text_value(header, 0x00280008), 1) > 1 and "PerFrameFunctionalGroupsSequence" in header
    )


def is_mosaic(header: Dataset) -> bool:
    image_type = [v.upper() for v in _values(header, 0x00080008)]
    return "MOSAIC" in image_type


def is_localizer(header: Dataset) -> bool:
    image_type = [v.upper() for v in _values(header, 0x00080008)]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return True
    text = " ".join(text_value(header, tag) or "" for tag in (0x0008103E, 0x00181030))
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


def _values(header: Dataset, tag: int) -> list[str]:
    """Values of a text element (DS, IS, CS, UI, ...) as strings, parsed from the raw bytes when possible.

    Reading the raw value avoids pydicom's per-value object creation and validation, which dominates the
    cost of describing thousands of slices; the element itself is left unconverted for later readers.
    """
    elem = header.get_item(tag)  # ``None`` when absent (one lookup instead of a membership test first)
    if elem is None:
        return []
    value = elem.value
    if value is None:
        return []
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else []
    return [str(v).strip() for v in _as_list(value)]


def text_value(header: Dataset, tag: int) -> str | None:
    """The first value of a text element as a string (``None`` when absent or empty), without conversion."""
    values = _values(header, tag)
    return values[0] if values and values[0] != "" else None


def frames_of(index: int, src: SourceImage) -> list[FrameInfo]:
    """Describe every 2D image of one source instance."""
    header = src.header
    rows = int(header.get("Rows", 0) or 0)
    columns = int(header.get("Columns", 0) or 0)
    sop = text_value(header, 0x00080018) or ""
    sop_class = text_value(header, 0x00080016) or ""
    instance_number = _int(text_value(header, 0x00200013), 0)
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
            orientation=_floats(_values(header, 0x00200037), 6),
            position=_floats(_values(header, 0x00200032), 3),
            pixel_spacing=_spacing(_values(header, 0x00280030)),
            slope=_float(text_value(header, 0x00281053), 1.0),
            intercept=_float(text_value(header, 0x00281052), 0.0),
            attrs=attrs,
        )
    ]


def _enhanced_frames(
    index: int, header: Dataset, rows: int, columns: int, sop: str, sop_class: str, instance_number: int
) -> list[FrameInfo]:
    n_frames = _int(header.get("NumberOfFrames"), 1)
    shared_groups = _group_items(header, 0x52009229)  # Shared Functional Groups Sequence
    shared = shared_groups[0] if shared_groups else Dataset()
    per_frame = _group_items(header, 0x52009230)  # Per-frame Functional Groups Sequence
    top = _classic_attrs(header)
    frames: list[FrameInfo] = []
    shared_items = _first_items(shared)
    top_slope = _float(text_value(header, 0x00281053), 1.0)
    top_intercept = _float(text_value(header, 0x00281052), 0.0)
    for f in range(n_frames):
        items = dict(shared_items)
        if f < len(per_frame):
            items.update(_first_items(per_frame[f]))
        empty = Dataset()
        plane_pos = items.get(0x00209113, empty)
        plane_ori = items.get(0x00209116, empty)
        measures = items.get(0x00289110, empty)
        transform = items.get(0x00289145)
        content = items.get(0x00209111, empty)
        frame_type = items.get(0x00189226) or items.get(0x00189329) or empty
        diffusion = items.get(0x00189117, empty)
        echo = items.get(0x00189114, empty)
        cardiac = items.get(0x00189118, empty)
        attrs = dict(top)
        if _values(frame_type, 0x00089007):
            attrs["image_type"] = "\\".join(_values(frame_type, 0x00089007))
        if diffusion.get("DiffusionBValue") is not None:  # FD: binary
            attrs["b_value"] = _number(diffusion.DiffusionBValue)
        if echo.get("EffectiveEchoTime") is not None:  # FD: binary
            attrs["echo_time"] = _number(echo.EffectiveEchoTime)
        if content.get("TemporalPositionIndex") is not None:  # UL: binary
            attrs["temporal_position"] = _int(content.TemporalPositionIndex, 0)
        stack_id = text_value(content, 0x00209056)
        if stack_id is not None:
            attrs["stack_id"] = stack_id
        if content.get("FrameAcquisitionNumber") is not None:  # US: binary
            attrs["acquisition_number"] = _int(content.FrameAcquisitionNumber, 0)
        if cardiac.get("NominalCardiacTriggerDelayTime") is not None:  # FD: binary
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
                orientation=_floats(_values(plane_ori, 0x00200037), 6),
                position=_floats(_values(plane_pos, 0x00200032), 3),
                pixel_spacing=_spacing(_values(measures, 0x00280030)),
                slope=top_slope if transform is None else _float(text_value(transform, 0x00281053), 1.0),
                intercept=top_intercept
                if transform is None
                else _float(text_value(transform, 0x00281052), 0.0),
                attrs=attrs,
            )
        )
    return frames


#: Functional group sequences the loader reads (first item of each).
_FUNCTIONAL_GROUPS = (
    0x00209113,  # Plane Position Sequence
    0x00209116,  # Plane Orientation Sequence
    0x00289110,  # Pixel Measures Sequence
    0x00289145,  # Pixel Value Transformation Sequence
    0x00209111,  # Frame Content Sequence
    0x00189226,  # MR Image Frame Type Sequence
    0x00189329,  # CT Image Frame Type Sequence
    0x00189117,  # MR Diffusion Sequence
    0x00189114,  # MR Echo Sequence
    0x00189118,  # Cardiac Synchronization Sequence
)


#: An item of a functional groups sequence: a dataset, or the raw elements of one (see ``_group_items``).
_GroupItem = Dataset | dict[Any, Any]


def _group_items(header: Dataset, tag: int) -> list[_GroupItem]:
    """Items of a functional groups sequence, as raw element dicts when the fast reader can split them
    (no dataset is built for each of thousands of per-frame items), else as datasets."""
    if tag not in header:
        return []
    fast = sequence_item_elements(header.get_item(tag))
    if fast is not None:
        return list(fast)
    return list(_items(header, tag))


def _first_items(group: _GroupItem) -> dict[int, Dataset]:
    """The first item of each functional group sequence the loader reads, by tag."""
    out: dict[int, Dataset] = {}
    if not isinstance(group, Dataset):
        for tag in _FUNCTIONAL_GROUPS:
            elem = group.get(tag)
            if elem is None:
                continue
            items = sequence_items(elem)
            if items is None:  # not splittable here: pydicom decodes it within a dataset
                return _first_items(_as_dataset(group))
            if items:
                out[tag] = items[0]
        return out
    for tag in _FUNCTIONAL_GROUPS:
        items = _items(group, tag)
        if items:
            out[tag] = items[0]
    return out


def _as_dataset(raw: dict[Any, Any]) -> Dataset:
    ds = Dataset(raw)
    first = next(iter(raw.values()), None)
    if first is not None:
        ds.set_original_encoding(bool(first.is_implicit_VR), True)
    return ds


def _items(ds: Dataset, tag: int) -> list[Dataset]:
    """Items of a sequence; still-raw sequences are split with the fast reader, not decoded in full."""
    if tag not in ds:
        return []
    fast = sequence_items(ds.get_item(tag))
    if fast is not None:
        return fast
    value = ds[tag].value
    return list(value) if value else []


def _classic_attrs(header: Dataset) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    image_type = _values(header, 0x00080008)
    if image_type:
        attrs["image_type"] = "\\".join(image_type)
    b_value = diffusion_b_value(header)
    if b_value is not None:
        attrs["b_value"] = b_value
    for key, tag, parse in (
        ("echo_number", 0x00180086, _int_or_none),
        ("echo_time", 0x00180081, _number_or_none),
        ("temporal_position", 0x00200100, _int_or_none),
        ("acquisition_number", 0x00200012, _int_or_none),
        ("trigger_time", 0x00181060, _number_or_none),
    ):
        value = parse(text_value(header, tag))
        if value is not None:
            attrs[key] = value
    return attrs


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else _int(text, 0)


def _number_or_none(text: str | None) -> float | int | None:
    return None if text is None else _number(text)


def diffusion_b_value(header: Dataset) -> float | int | None:
    """The b-value: standard (0018,9087), then Siemens (0019,xx0C), GE (0043,xx39), Philips (2001,xx03)."""
    if header.get("DiffusionBValue") not in (None, ""):  # FD: binary, read through pydicom
        return _number(header.DiffusionBValue)
    blocks = _private_blocks(header)
    for group, creator, elem in (
        (0x0019, "SIEMENS MR HEADER", 0x0C),
        (0x0043, "GEMS_PARM_01", 0x39),
        (0x2001, "Philips Imaging DD 001", 0x03),
    ):
        block = blocks.get((group, creator))
        data_tag = (group << 16) | (block << 8) | elem if block is not None else None
        value = header[data_tag].value if data_tag is not None and data_tag in header else None
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


#: Groups of the private b-value elements and their private creators.
_B_VALUE_GROUPS = (0x0019, 0x0043, 0x2001)


def _private_blocks(header: Dataset) -> dict[tuple[int, str], int]:
    """Private creator blocks of the b-value groups: (group, creator) -> block number (0x10-0xFF)."""
    out: dict[tuple[int, str], int] = {}
    for tag in header.keys():
        t = int(tag)
        if t >> 16 in _B_VALUE_GROUPS and 0x10 <= (t & 0xFFFF) <= 0xFF:
            creator = text_value(header, t)
            if creator is not None:
                out[(t >> 16, creator)] = t & 0xFF
    return out


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
        arr = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if np.all(np.isfinite(arr)) else None  # NaN/inf geometry counts as missing


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
