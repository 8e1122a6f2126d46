"""Reading the headers of a series once, and describing every frame it holds.

The header of each source file is walked once, up to its Pixel Data element, by
:func:`conversion.rawheader.scan_file`, which only notes where the attributes the loader reads lie in the
bytes (``pydicom.dcmread(stop_before_pixels=True)`` reads the uncommon encodings). The file offset of the
Pixel Data element is kept so that :mod:`conversion.pixels` can later decode frames straight into the
output volume without parsing the header again, and the header's bytes are kept so that the complete
pydicom header can be built if a later stage asks for it (:attr:`SourceImage.header`). Classic
single-frame and Enhanced multi-frame objects are both described as a flat list of :class:`FrameInfo` (one
per 2D image) carrying geometry, rescale and the attributes that can tell stacks apart.
"""

from __future__ import annotations

import io
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

from conversion.dicomscan import read_header
from conversion.dicomwalk import PIXEL_TAGS
from conversion.errors import NotSegmentableError, Reason
from conversion.rawheader import (
    DECODE_ERRORS,
    ENHANCED_SOP_CLASSES,
    FUNCTIONAL_GROUP_TAGS,
    PRIVATE_GROUPS,
    PRIVATE_VRS,
    DatasetView,
    HeaderView,
    NeedsPydicom,
    RawHeader,
    first_text,
    scan_file,
)
from conversion.values import as_float, as_int, as_number, floats, int_or_none, number_or_none, spacing

logger = logging.getLogger(__name__)

_LOCALIZER_WORDS = re.compile(
    r"\b(localizer|localiser|scout|survey|locator|3[- ]?plane|tri[- ]?pilot)\b", re.I
)


@dataclass
class SourceImage:
    """One instance of the series: what the loader reads of its header, and where its pixels are."""

    view: HeaderView
    transfer_syntax: UID
    path: Path | None = None
    #: Byte offset of the Pixel Data element's tag in the file (``None`` when the file has none).
    pixel_offset: int | None = None
    #: The complete dataset when the caller passed datasets instead of files.
    dataset: Dataset | None = None
    #: Encoding of the dataset as read (also known for transfer syntaxes pydicom does not know).
    implicit_vr: bool = False
    little_endian: bool = True
    #: The file's bytes before its Pixel Data element, parsed into :attr:`header` on first use.
    header_bytes: bytes | None = None
    #: The complete header (no pixel data), once parsed.
    parsed_header: Dataset | None = None

    @classmethod
    def from_dataset(cls, header: Dataset, transfer_syntax: UID) -> SourceImage:
        """A source described by a header dataset (no file behind it)."""
        return cls(view=DatasetView(header), transfer_syntax=transfer_syntax, parsed_header=header)

    @property
    def header(self) -> Dataset:
        """The complete header (no pixel data): parsed from the file's bytes on first use only, since the
        loader itself reads through :attr:`view` (the DICOM-SEG writer needs the whole header)."""
        if self.parsed_header is None:
            assert self.header_bytes is not None
            scanned = read_header(self.header_bytes, str(self.path or ""))
            if scanned is None:  # the scanner read it; pydicom's reader is the tolerant fallback
                try:
                    header = dcmread(io.BytesIO(self.header_bytes), stop_before_pixels=True, force=True)
                except (InvalidDicomError, EOFError, *DECODE_ERRORS) as exc:
                    raise NotSegmentableError(
                        f"cannot read the header of {self.name}: {type(exc).__name__}: {exc}",
                        reason=Reason.UNREADABLE,
                    ) from exc
                scanned = (header, None)
            self.parsed_header = scanned[0]
        return self.parsed_header

    @property
    def has_pixels(self) -> bool:
        if self.dataset is not None:
            return any(t in self.dataset for t in PIXEL_TAGS)
        return self.pixel_offset is not None

    @property
    def name(self) -> str:
        """How messages name the instance: its SOP Instance UID, else its file name (never the folder it
        lies in: for the node that is the internal spool)."""
        uid = first_text(self.view, 0x00080018)
        if uid:
            return f"instance {uid}"
        return f"file {self.path.name}" if self.path is not None else "an instance without SOP Instance UID"


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


#: Files up to this size are read whole at once (cheaper than walking a header twice); of larger files the
#: first ``_FIRST_READ`` bytes are read, which usually hold the whole header, then 16 times as much at a
#: time while the header goes on (Enhanced objects start at ``ENHANCED_FIRST_READ``: their per-frame
#: headers are long).
_WHOLE_FILE = 262144
_FIRST_READ = 65536


def read_sources(items: list[str | os.PathLike[str] | Dataset | SourceImage]) -> list[SourceImage]:
    """Read the header of every item once (files up to their Pixel Data element); sources already read are
    taken as they are."""
    sources: list[SourceImage] = []
    for item in items:
        if isinstance(item, SourceImage):
            sources.append(item)
            continue
        if isinstance(item, Dataset):
            header = Dataset()
            for elem in item:
                if elem.tag not in PIXEL_TAGS:
                    header.add(elem)
            meta = getattr(item, "file_meta", None)
            if meta is not None:
                header.file_meta = meta
            ts = _transfer_syntax(header)
            sources.append(
                SourceImage(view=DatasetView(header), transfer_syntax=ts, dataset=item, parsed_header=header)
            )
            continue
        sources.append(_read_file(Path(item)))
    return sources


def _read_file(path: Path) -> SourceImage:
    try:
        # The first bytes of the file usually hold the whole header; the pixels are read later at their
        # offset, straight into the volume.
        with path.open("rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            data = fp.read(-1 if size <= _WHOLE_FILE else _FIRST_READ)
            complete = len(data) >= size
            while True:
                try:
                    scanned = scan_file(data, complete)
                    break
                except EOFError as more:  # a longer header: read on
                    hint = more.args[0] if more.args and isinstance(more.args[0], int) else 0
                    chunk = fp.read(max(len(data) * 15, hint))
                    data += chunk
                    complete = not chunk or len(data) >= size
        if scanned is not None:
            view = scanned.header
            if not (view.has(0x00080016) or view.has(0x00080018)):
                raise NotSegmentableError(
                    f"cannot read file {path.name} as a DICOM instance: it has no SOP Class or SOP "
                    "Instance UID",
                    reason=Reason.UNREADABLE,
                )
            return SourceImage(
                view=view,
                transfer_syntax=UID(scanned.transfer_syntax),
                path=path,
                pixel_offset=scanned.pixel_offset,
                implicit_vr=scanned.implicit,
                little_endian=True,
                header_bytes=scanned.header_bytes,
            )
        if not complete:
            data = path.read_bytes()
        # uncommon encodings: pydicom's tolerant reader
        buffer = io.BytesIO(data)
        header = dcmread(buffer, stop_before_pixels=True, force=True)
        pos = buffer.tell()
        offset = pos if _is_pixel_tag(data[pos : pos + 4], header.original_encoding[1] is not False) else None
        del buffer, data
    except (InvalidDicomError, OSError, EOFError, *DECODE_ERRORS) as exc:
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise NotSegmentableError(
            f"cannot read file {path.name} as DICOM ({cause})", reason=Reason.UNREADABLE
        ) from exc
    if "SOPClassUID" not in header and "SOPInstanceUID" not in header:
        raise NotSegmentableError(
            f"cannot read file {path.name} as a DICOM instance: it has no SOP Class or SOP Instance UID",
            reason=Reason.UNREADABLE,
        )
    implicit, little = header.original_encoding
    return SourceImage(
        view=DatasetView(header, f"file {path.name}"),
        transfer_syntax=_transfer_syntax(header),
        path=path,
        pixel_offset=offset,
        implicit_vr=bool(implicit),
        little_endian=little is not False,
        parsed_header=header,
    )


def _is_pixel_tag(tag_bytes: bytes, little_endian: bool) -> bool:
    if len(tag_bytes) != 4:
        return False
    order: Literal["little", "big"] = "little" if little_endian else "big"
    group = int.from_bytes(tag_bytes[:2], order)
    elem = int.from_bytes(tag_bytes[2:], order)
    return (group << 16 | elem) in PIXEL_TAGS


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = first_text(DatasetView(meta), 0x00020010) if meta is not None else None  # no UI validation
    if ts:
        return UID(ts)
    # Datasets received over the network without file meta: fall back on their original encoding.
    implicit, little = ds.original_encoding
    if implicit is None or implicit:
        return UID("1.2.840.10008.1.2")
    return UID("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")


def is_enhanced(view: HeaderView) -> bool:
    """Multi-frame object described by functional groups (not a classic object that carries one)."""
    return (first_text(view, 0x00080016) or "") in ENHANCED_SOP_CLASSES or (
        as_int(first_text(view, 0x00280008), 1) > 1 and view.has(0x52009230)
    )


def is_mosaic(view: HeaderView) -> bool:
    return "MOSAIC" in (v.upper() for v in view.text(0x00080008))


def is_localizer(view: HeaderView) -> bool:
    image_type = [v.upper() for v in view.text(0x00080008)]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return True
    text = " ".join(first_text(view, tag) or "" for tag in (0x0008103E, 0x00181030))
    return bool(_LOCALIZER_WORDS.search(text.replace("_", " ")))


def series_name(view: HeaderView) -> str:
    """How a PACS admin finds the series: number, description and Series Instance UID."""
    number = first_text(view, 0x00200011)
    desc = " ".join(view.text(0x0008103E)) or " ".join(view.text(0x00181030))
    uid = first_text(view, 0x0020000E) or "?"
    parts = [f"series {number}" if number else "series"]
    if desc.strip():
        parts.append(f'"{desc.strip()}"')
    parts.append(f"({uid})")
    return " ".join(parts)


def frames_of(index: int, src: SourceImage) -> list[FrameInfo]:
    """Describe every 2D image of one source instance."""
    view = src.view
    rows = as_int(view.number(0x00280010), 0)
    columns = as_int(view.number(0x00280011), 0)
    sop = first_text(view, 0x00080018) or ""
    sop_class = first_text(view, 0x00080016) or ""
    instance_number = as_int(first_text(view, 0x00200013), 0)
    if is_enhanced(view):
        try:
            return _enhanced_frames(index, view, rows, columns, sop, sop_class, instance_number)
        except NeedsPydicom:  # functional groups in an encoding the scanner leaves to pydicom
            view = DatasetView(src.header, src.name)
            return _enhanced_frames(index, view, rows, columns, sop, sop_class, instance_number)
    return [
        FrameInfo(
            source=index,
            frame=None,
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            instance_number=instance_number,
            rows=rows,
            columns=columns,
            orientation=floats(view.text(0x00200037), 6),
            position=floats(view.text(0x00200032), 3),
            pixel_spacing=spacing(view.text(0x00280030)),
            slope=as_float(first_text(view, 0x00281053), 1.0),
            intercept=as_float(first_text(view, 0x00281052), 0.0),
            attrs=_classic_attrs(view),
        )
    ]


#: Functional group sequences the loader reads (first item of each).
_FUNCTIONAL_GROUP_TAGS = frozenset(FUNCTIONAL_GROUP_TAGS)


def _enhanced_frames(
    index: int, view: HeaderView, rows: int, columns: int, sop: str, sop_class: str, instance_number: int
) -> list[FrameInfo]:
    n_frames = as_int(first_text(view, 0x00280008), 1)
    shared_groups = view.items(0x52009229, _FUNCTIONAL_GROUP_TAGS)  # Shared Functional Groups Sequence
    per_frame = view.items(0x52009230, _FUNCTIONAL_GROUP_TAGS)  # Per-frame Functional Groups Sequence
    top = _classic_attrs(view)
    frames: list[FrameInfo] = []
    shared_items = _first_items(shared_groups[0]) if shared_groups else {}
    top_slope = as_float(first_text(view, 0x00281053), 1.0)
    top_intercept = as_float(first_text(view, 0x00281052), 0.0)
    empty = RawHeader(b"", False, {})
    for f in range(n_frames):
        items = dict(shared_items)
        if f < len(per_frame):
            items.update(_first_items(per_frame[f]))
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
        image_type = frame_type.text(0x00089007)  # Frame Type
        if image_type:
            attrs["image_type"] = "\\".join(image_type)
        b_value = diffusion.number(0x00189087)  # Diffusion b-value (FD)
        if b_value is not None:
            attrs["b_value"] = as_number(b_value)
        echo_time = echo.number(0x00189082)  # Effective Echo Time (FD)
        if echo_time is not None:
            attrs["echo_time"] = as_number(echo_time)
        temporal = content.number(0x00209128)  # Temporal Position Index (UL)
        if temporal is not None:
            attrs["temporal_position"] = int(temporal)
        stack_id = first_text(content, 0x00209056)
        if stack_id is not None:
            attrs["stack_id"] = stack_id
        acquisition = content.number(0x00209156)  # Frame Acquisition Number (US)
        if acquisition is not None:
            attrs["acquisition_number"] = int(acquisition)
        trigger = cardiac.number(0x00209153)  # Nominal Cardiac Trigger Delay Time (FD)
        if trigger is not None:
            attrs["trigger_time"] = as_number(trigger)
        frames.append(
            FrameInfo(
                source=index,
                frame=f,
                sop_instance_uid=sop,
                sop_class_uid=sop_class,
                instance_number=instance_number,
                rows=rows,
                columns=columns,
                orientation=floats(plane_ori.text(0x00200037), 6),
                position=floats(plane_pos.text(0x00200032), 3),
                pixel_spacing=spacing(measures.text(0x00280030)),
                slope=top_slope if transform is None else as_float(first_text(transform, 0x00281053), 1.0),
                intercept=top_intercept
                if transform is None
                else as_float(first_text(transform, 0x00281052), 0.0),
                attrs=attrs,
            )
        )
    return frames


def _first_items(group: HeaderView) -> dict[int, HeaderView]:
    """The first item of each functional group sequence the loader reads, by tag."""
    out: dict[int, HeaderView] = {}
    for tag in FUNCTIONAL_GROUP_TAGS:
        if group.has(tag):
            items = group.items(tag)
            if items:
                out[tag] = items[0]
    return out


def _classic_attrs(view: HeaderView) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    image_type = view.text(0x00080008)
    if image_type:
        attrs["image_type"] = "\\".join(image_type)
    b_value = diffusion_b_value(view)
    if b_value is not None:
        attrs["b_value"] = b_value
    for key, tag, parse in (
        ("echo_number", 0x00180086, int_or_none),
        ("echo_time", 0x00180081, number_or_none),
        ("temporal_position", 0x00200100, int_or_none),
        ("acquisition_number", 0x00200012, int_or_none),
        ("trigger_time", 0x00181060, number_or_none),
    ):
        value = parse(first_text(view, tag))
        if value is not None:
            attrs[key] = value
    return attrs


def diffusion_b_value(view: HeaderView) -> float | int | None:
    """The b-value: standard (0018,9087), then Siemens (0019,xx0C), GE (0043,xx39), Philips (2001,xx03)."""
    standard = view.number(0x00189087)  # FD
    if standard is not None:
        return as_number(standard)
    blocks = view.private_blocks(PRIVATE_GROUPS)
    for (group, creator, elem), vr in PRIVATE_VRS.items():
        block = blocks.get((group, creator))
        if block is None:
            continue
        data_tag = (group << 16) | (block << 8) | elem
        if not view.has(data_tag):
            continue
        number = view.number(data_tag, vr)
        if number is None:
            logger.warning("unreadable private b-value %r in (%04X,xx%02X)", view.text(data_tag), group, elem)
            continue
        if group == 0x0043 and number >= 1e9:
            number %= 1e9  # GE encodes a flag in the high digits
        return int(number) if number.is_integer() else number
    return None
