"""Reading only what the loader needs from a DICOM header, straight from the file's bytes.

The loader looks at about forty attributes of each instance (identity, geometry, rescale, pixel format and
the attributes that tell stacks apart). :func:`scan_file` walks the elements of a Part 10 file once (with
:class:`conversion.dicomwalk.Walker`, the walker the C-STORE admission check uses too) and remembers, for
those attributes only, where their values lie in the bytes; nothing is decoded until it is read, and no
pydicom element or dataset is built. The values are then read with the element's VR (explicit
VR) or the data dictionary's VR (implicit VR), as pydicom would read them.

:class:`HeaderView` is what :mod:`conversion.headers` reads through: :class:`RawHeader` for files scanned
here and :class:`DatasetView` for pydicom datasets (datasets given by the caller, or files in an encoding
this scanner leaves to pydicom: big endian, deflate, no preamble, a VR that does not match the transfer
syntax, truncated files). The complete header of a scanned file (for the DICOM-SEG writer) is built only
when asked for, by :func:`conversion.dicomscan.read_header` on the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Protocol

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException

from conversion.dicomscan import sequence_items
from conversion.dicomwalk import (
    PIXEL_KEYS,
    Located,
    Walker,
    WalkError,
    fast_path_implicit,
    file_meta,
    is_part10,
    key_of,
    text_value,
)
from conversion.errors import NotSegmentableError, Reason

#: Binary numeric VRs (little endian).
_BINARY = {
    vr: struct.Struct("<" + code)
    for vr, code in (("US", "H"), ("SS", "h"), ("UL", "L"), ("SL", "l"), ("FL", "f"), ("FD", "d"))
    + (("UV", "Q"), ("SV", "q"))
}
#: Bytes at which an ISO 2022 code extension returns to the initial one (pydicom's delimiters).
_DELIMITERS = {"PN": {0x5E, 0x3D}, "LT": {0x0D, 0x0A, 0x09, 0x0C}, "ST": {0x0D, 0x0A, 0x09, 0x0C}}
#: Text VRs whose bytes follow the Specific Character Set (the others are plain ASCII).
_CHARSET_VRS = frozenset(("LO", "SH", "PN", "LT", "ST", "UT", "UC"))


#: Attributes of the main dataset the loader reads.
TOP_LEVEL_TAGS = (
    0x00080005,  # Specific Character Set
    0x00080008,  # Image Type
    0x00080016,  # SOP Class UID
    0x00080018,  # SOP Instance UID
    0x00080060,  # Modality
    0x0008103E,  # Series Description
    0x00180081,  # Echo Time
    0x00180086,  # Echo Number(s)
    0x00181030,  # Protocol Name
    0x00181060,  # Trigger Time
    0x00181120,  # Gantry/Detector Tilt
    0x00189087,  # Diffusion b-value
    0x0020000D,  # Study Instance UID
    0x0020000E,  # Series Instance UID
    0x00200011,  # Series Number
    0x00200012,  # Acquisition Number
    0x00200013,  # Instance Number
    0x00200032,  # Image Position (Patient)
    0x00200037,  # Image Orientation (Patient)
    0x00200052,  # Frame of Reference UID
    0x00200100,  # Temporal Position Identifier
    0x00280002,  # Samples per Pixel
    0x00280004,  # Photometric Interpretation
    0x00280006,  # Planar Configuration
    0x00280008,  # Number of Frames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280030,  # Pixel Spacing
    0x00280100,  # Bits Allocated
    0x00280101,  # Bits Stored
    0x00280102,  # High Bit
    0x00280103,  # Pixel Representation
    0x00281052,  # Rescale Intercept
    0x00281053,  # Rescale Slope
    0x52009229,  # Shared Functional Groups Sequence
    0x52009230,  # Per-frame Functional Groups Sequence
)
#: Private groups whose elements are all kept (the vendors' b-values; see ``PRIVATE_VRS``).
PRIVATE_GROUPS = frozenset((0x0019, 0x0043, 0x2001))
#: VR of the private elements the loader reads, by (group, private creator, element offset).
PRIVATE_VRS = {
    (0x0019, "SIEMENS MR HEADER", 0x0C): "IS",
    (0x0043, "GEMS_PARM_01", 0x39): "IS",
    (0x2001, "Philips Imaging DD 001", 0x03): "FL",
}
_TOP_WANTED = frozenset(key_of(t) for t in TOP_LEVEL_TAGS)
#: Multi-frame objects described by functional groups.
ENHANCED_SOP_CLASSES = frozenset(
    (
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
    )
)
#: Bytes read before walking the header of an Enhanced object (when the file is larger).
ENHANCED_FIRST_READ = 1 << 20
#: Functional group sequences the loader reads in the items of the functional groups sequences.
FUNCTIONAL_GROUP_TAGS = (
    0x00189114,  # MR Echo Sequence
    0x00189117,  # MR Diffusion Sequence
    0x00189118,  # Cardiac Synchronization Sequence
    0x00189226,  # MR Image Frame Type Sequence
    0x00189329,  # CT Image Frame Type Sequence
    0x00209111,  # Frame Content Sequence
    0x00209113,  # Plane Position Sequence
    0x00209116,  # Plane Orientation Sequence
    0x00289110,  # Pixel Measures Sequence
    0x00289145,  # Pixel Value Transformation Sequence
)
#: Elements kept in the items of a sequence split while scanning, by the sequence's key (others: all).
_ITEM_FILTERS = {
    key_of(0x52009229): frozenset(key_of(t) for t in FUNCTIONAL_GROUP_TAGS),
    key_of(0x52009230): frozenset(key_of(t) for t in FUNCTIONAL_GROUP_TAGS),
}


#: What pydicom can raise decoding a damaged element (NotImplementedError: a VR it does not know). Callers
#: turn these into NotSegmentableError ``unreadable`` naming the file and element, never swallow them.
DECODE_ERRORS = (
    NotImplementedError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    BytesLengthException,
    struct.error,
)


class NeedsPydicom(Exception):
    """The bytes are not in an encoding this scanner reads (or are cut short): use pydicom's reader."""


class HeaderView(Protocol):
    """Read access to the attributes of a header (or of a sequence item) the loader uses."""

    def has(self, tag: int) -> bool: ...

    def text(self, tag: int) -> list[str]:
        """The values of a text element (DS, IS, CS, UI, LO, ...) as stripped strings; [] when absent."""
        ...

    def number(self, tag: int, vr: str | None = None) -> float | None:
        """The first value of a numeric element (binary or text) as a float; ``None`` when absent/empty.

        ``vr`` names the VR when the encoding does not carry it and the data dictionary does not know the
        tag (private elements)."""
        ...

    def items(self, tag: int, keep: frozenset[int] | None = None) -> list[HeaderView]:
        """The items of a sequence element ([] when absent). ``keep``: the tags the caller will read in the
        items (a hint; all elements may be kept)."""
        ...

    def private_blocks(self, groups: frozenset[int]) -> dict[tuple[int, str], int]:
        """Private creator blocks in ``groups``: (group, creator) -> block number (0x10-0xFF)."""
        ...


def first_text(view: HeaderView, tag: int) -> str | None:
    """The first value of a text element (``None`` when absent or empty)."""
    values = view.text(tag)
    return values[0] if values and values[0] != "" else None


@lru_cache(maxsize=512)
def _dictionary_vr(tag: int) -> str | None:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    return vr.split(" or ")[0]


class RawHeader:
    """Elements of a dataset (or of a sequence item) located in a buffer, decoded on read."""

    __slots__ = ("data", "implicit", "elements", "sequences")

    def __init__(
        self,
        data: bytes,
        implicit: bool,
        elements: dict[int, tuple[str | None, int, int]],
        sequences: dict[int, list[RawHeader]] | None = None,
    ) -> None:
        self.data = data
        self.implicit = implicit
        #: tag -> (explicit VR or ``None``, value offset in ``data``, value length)
        self.elements = elements
        #: Items of the undefined-length sequences among ``elements``, split while they were walked.
        self.sequences = sequences or {}

    def has(self, tag: int) -> bool:
        return tag in self.elements

    def _charsets(self) -> list[str] | None:
        entry = self.elements.get(0x00080005)
        if entry is None:
            return None
        _, pos, length = entry
        text = self.data[pos : pos + length].decode("ascii", "replace").strip(" \x00")
        return [v.strip() for v in text.split("\\")] if text else None

    def text(self, tag: int) -> list[str]:
        entry = self.elements.get(tag)
        if entry is None:
            return []
        vr, pos, length = entry
        raw = self.data[pos : pos + length]
        if raw.isascii():
            text = raw.decode("ascii")
        else:
            vr = vr or _dictionary_vr(tag)
            charsets = self._charsets() if vr in _CHARSET_VRS else None
            # decode_bytes takes Python's codec names, not the defined terms of (0008,0005)
            encodings = convert_encodings(charsets) if charsets else None
            text = (
                decode_bytes(raw, encodings, _DELIMITERS.get(vr or "", set()))
                if encodings
                else raw.decode("latin-1")
            )
        text = text.strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else []

    def number(self, tag: int, vr: str | None = None) -> float | None:
        entry = self.elements.get(tag)
        if entry is None:
            return None
        explicit_vr, pos, length = entry
        vr = explicit_vr if explicit_vr not in (None, "UN") else (vr or _dictionary_vr(tag))
        binary = _BINARY.get(vr or "")
        if binary is not None:
            if length < binary.size:
                return None
            return float(binary.unpack_from(self.data, pos)[0])
        values = self.text(tag)
        if not values or values[0] == "":
            return None
        try:
            return float(values[0])
        except ValueError:
            return None

    def items(self, tag: int, keep: frozenset[int] | None = None) -> list[HeaderView]:
        split = self.sequences.get(tag)
        if split is not None:
            return list(split)
        entry = self.elements.get(tag)
        if entry is None:
            return []
        _, pos, length = entry
        wanted = None if keep is None else frozenset(key_of(t) for t in keep)
        try:
            return list(_walker(self.data, self.implicit).items_in(pos, pos + length, wanted, split=True))
        except WalkError as exc:
            raise NeedsPydicom(f"sequence {tag:08X} cannot be split here: {exc}") from exc

    def private_blocks(self, groups: frozenset[int]) -> dict[tuple[int, str], int]:
        return _private_blocks(self, self.elements, groups)


class DatasetView:
    """:class:`HeaderView` over a pydicom dataset. An element pydicom cannot decode (a damaged value, a VR it
    does not know) raises :class:`~conversion.errors.NotSegmentableError` ``unreadable`` naming ``source``."""

    __slots__ = ("dataset", "source")

    def __init__(self, dataset: Dataset, source: str = "") -> None:
        self.dataset = dataset
        self.source = source

    def _value(self, tag: int) -> Any:
        """The decoded value of a present element."""
        try:
            return self.dataset[tag].value
        except DECODE_ERRORS as exc:
            where = f" of {self.source}" if self.source else ""
            element = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            raise NotSegmentableError(
                f"cannot read element {element}{where}: {type(exc).__name__}: {exc}", reason=Reason.UNREADABLE
            ) from exc

    def has(self, tag: int) -> bool:
        return tag in self.dataset

    def text(self, tag: int) -> list[str]:
        # raw values are parsed here (no per-value pydicom object creation and validation)
        elem = self.dataset.get_item(tag)  # ``None`` when absent
        if elem is None:
            return []
        value = elem.value
        if value is None:
            return []
        if isinstance(value, bytes):
            if not value.isascii() and tag in self.dataset:
                value = self._value(tag)  # decoded with the Specific Character Set
            if isinstance(value, bytes):
                text = value.decode("latin-1").strip(" \x00")
                return [v.strip(" \x00") for v in text.split("\\")] if text else []
        if isinstance(value, str):
            return [str(value).strip()]
        try:
            return [str(v).strip() for v in value]
        except TypeError:
            return [str(value).strip()]

    def number(self, tag: int, vr: str | None = None) -> float | None:
        if tag not in self.dataset:
            return None
        value = self._value(tag)
        if isinstance(value, bytes):  # UN, or a private element pydicom has no VR for
            binary = _BINARY.get(vr or "")
            if binary is not None:
                if len(value) < binary.size:
                    return None
                return float(binary.unpack_from(value)[0])
            value = value.decode("ascii", "ignore").strip("\x00 ").split("\\")[0]
        elif not isinstance(value, str | int | float):
            try:
                value = list(value)[0]
            except (TypeError, IndexError):
                return None
        if value in (None, ""):
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def items(self, tag: int, keep: frozenset[int] | None = None) -> list[HeaderView]:
        if tag not in self.dataset:
            return []
        fast = sequence_items(self.dataset.get_item(tag))
        if fast is not None:
            return [DatasetView(item, self.source) for item in fast]
        value = self._value(tag)
        return [DatasetView(item, self.source) for item in value] if value else []

    def private_blocks(self, groups: frozenset[int]) -> dict[tuple[int, str], int]:
        return _private_blocks(self, (int(tag) for tag in self.dataset.keys()), groups)


def _private_blocks(
    view: HeaderView, tags: Iterable[int], groups: frozenset[int]
) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for tag in tags:
        if tag >> 16 in groups and 0x10 <= (tag & 0xFFFF) <= 0xFF:  # a Private Creator element
            creator = first_text(view, tag)
            if creator is not None:
                out[(tag >> 16, creator)] = tag & 0xFF
    return out


class ScannedFile:
    """What :func:`scan_file` finds in a file."""

    __slots__ = ("header", "transfer_syntax", "implicit", "pixel_offset", "header_bytes")

    def __init__(
        self,
        header: RawHeader,
        transfer_syntax: str,
        implicit: bool,
        pixel_offset: int | None,
        header_bytes: bytes,
    ) -> None:
        self.header = header
        self.transfer_syntax = transfer_syntax
        self.implicit = implicit
        #: Offset of the Pixel Data element's tag in the file, ``None`` when the file has no pixel data.
        self.pixel_offset = pixel_offset
        #: The file's bytes before its Pixel Data element (everything :func:`read_header` needs).
        self.header_bytes = header_bytes


def scan_file(data: bytes, complete: bool) -> ScannedFile | None:
    """Locate the loader's attributes in the first bytes of a Part 10 file.

    ``complete``: ``data`` is the whole file. Returns ``None`` for what is left to pydicom (no preamble,
    an encoding not read here, bytes that do not parse). When ``data`` is only the start of the file and
    the header may go on past it, raises ``EOFError`` (with, as its argument, how many more bytes to read
    at least, where known): the caller reads more and calls again.
    """
    if len(data) < 144 or not is_part10(data):
        return None
    try:
        meta, pos = file_meta(data)
        transfer_syntax = text_value(data, meta, 0x00020010)
        sop_class = text_value(data, meta, 0x00020002) or ""
        if not transfer_syntax:
            raise WalkError("no Transfer Syntax UID in the file meta information")
        if not complete and sop_class in ENHANCED_SOP_CLASSES and len(data) < ENHANCED_FIRST_READ:
            raise EOFError(ENHANCED_FIRST_READ - len(data))  # per-frame headers: read more before walking
        implicit = fast_path_implicit(transfer_syntax)
        if implicit is None:
            return None
        sequences: dict[int, list[RawHeader]] = {}
        elements, _, pixel_offset = _walker(data, implicit).elements(
            pos, len(data), _TOP_WANTED, PRIVATE_GROUPS, sequences, stop_keys=PIXEL_KEYS
        )
    except (WalkError, UnicodeDecodeError):
        if not complete:
            raise EOFError("header continues past the bytes read") from None
        return None
    if pixel_offset is None and not complete:
        raise EOFError("no Pixel Data element within the bytes read")
    header_bytes = data[:pixel_offset] if pixel_offset is not None else data
    header = RawHeader(header_bytes, implicit, elements, sequences)
    if header_bytes is not data:
        _rebind(header, header_bytes)  # keep only the header's bytes alive, not the whole file
    return ScannedFile(header, transfer_syntax, implicit, pixel_offset, header_bytes)


def _walker(data: bytes, implicit: bool) -> Walker[RawHeader]:
    """A walker of ``data`` whose split sequence items are :class:`RawHeader` objects on the same bytes."""

    def item(found: Located, sequences: dict[int, list[RawHeader]]) -> RawHeader:
        return RawHeader(data, implicit, found, sequences)

    return Walker(data, implicit=implicit, make_item=item, item_filters=_ITEM_FILTERS)


def _rebind(header: RawHeader, data: bytes) -> None:
    """Point ``header`` and the items split from it at ``data`` (a prefix of the bytes they were read from,
    with the same offsets)."""
    header.data = data
    for items in header.sequences.values():
        for item in items:
            _rebind(item, data)
