"""A fast reader of DICOM file headers (Part 10 files, little endian), with pydicom's own data model.

pydicom's reader parses every sequence item into a ``Dataset`` while reading; for MR headers (nested
referenced-image, functional-group and private sequences) that is most of the cost of loading a series.
This reader walks the elements of the main dataset once, keeps each value as raw bytes in a pydicom
``RawDataElement`` (sequences included: pydicom decodes a raw sequence on first access) and stops at the
Pixel Data element, whose offset it returns. The result is an ordinary :class:`pydicom.dataset.FileDataset`.

Only the common encodings take this path: a 128-byte preamble with ``DICM``, then Implicit VR Little Endian,
Explicit VR Little Endian or an encapsulated (compressed) transfer syntax. Anything else (Big Endian,
Deflate, no preamble, a VR that does not match the declared transfer syntax, a truncated file) returns
``None`` and the caller reads the file with ``pydicom.dcmread``, which is more tolerant.
"""

from __future__ import annotations

import struct

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV")
)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Explicit VRs with a 16-bit length, by their two bytes (the fast path of ``_scan``).
_SHORT_VRS = {
    vr.encode("ascii"): vr
    for vr in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL")
    + ("SS", "ST", "TM", "UI", "UL", "US")
}
#: ``tuple.__new__``: builds a ``RawDataElement`` without the Python-level ``__new__`` of the named tuple.
_new_tuple = tuple.__new__
_U32 = struct.Struct("<L").unpack_from
_U16 = struct.Struct("<H").unpack_from
_TAG = struct.Struct("<HH").unpack_from
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


class _Unsupported(Exception):
    """The file needs pydicom's general reader."""


def read_header(data: bytes, filename: str = "") -> tuple[FileDataset, int | None] | None:
    """The header of a DICOM file (no pixel data) and the offset of its Pixel Data tag, or ``None``.

    ``None`` means: use ``pydicom.dcmread`` for this file.
    """
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    try:
        meta_raw, pos, _ = _scan(data, 132, implicit=False, only_group=0x0002)
        meta = FileMetaDataset(Dataset(meta_raw))
        ts_elem = meta_raw.get(BaseTag(0x00020010))
        if not isinstance(ts_elem, RawDataElement) or ts_elem.value is None:
            return None
        ts = UID(ts_elem.value.decode("ascii").strip(" \x00"))
        if ts == _IMPLICIT_LE:
            implicit = True
        elif ts == _EXPLICIT_LE or (ts.is_transfer_syntax and ts.is_encapsulated and not ts.is_deflated):
            implicit = False
        else:
            return None
        raw, _, pixel_offset = _scan(data, pos, implicit=implicit, only_group=None)
    except (_Unsupported, struct.error, IndexError, UnicodeDecodeError, ValueError):
        return None
    dataset = Dataset(raw)
    header = FileDataset(filename, dataset, preamble=data[:128], file_meta=meta)
    header.set_original_encoding(implicit, True)
    return header, pixel_offset


def _scan(
    data: bytes, pos: int, *, implicit: bool, only_group: int | None, end_of_data: int | None = None
) -> tuple[dict[BaseTag, DataElement | RawDataElement], int, int | None]:
    """Raw elements from ``pos`` to ``end_of_data`` (or the end of ``only_group``, the Pixel Data
    element, or an Item Delimitation Item, after which it returns)."""
    raw: dict[BaseTag, DataElement | RawDataElement] = {}
    size = len(data)
    end_of_data = size if end_of_data is None else end_of_data
    while pos < end_of_data:
        group, elem = _TAG(data, pos)
        if only_group is not None and group != only_group:
            return raw, pos, None
        tag = (group << 16) | elem
        if tag in _PIXEL_TAGS:
            return raw, pos, pos
        if group == 0xFFFE:
            if elem == 0xE00D:  # end of an undefined-length item
                return raw, pos + 8, None
            raise _Unsupported("item tag among the elements of a dataset")
        vr: str | None
        if implicit:
            length = _U32(data, pos + 4)[0]
            value_pos = pos + 8
            vr = None
        else:
            vr = _SHORT_VRS.get(data[pos + 4 : pos + 6])
            if vr is not None:  # common case: a short VR with a 16-bit length
                length = _U16(data, pos + 6)[0]
                value_pos = pos + 8
            else:
                length = -1
        if length == -1 or length == _UNDEFINED:
            end, vr, length, value_pos = _element(data, pos, implicit)
        else:
            end = value_pos + length
            if end > size:
                raise _Unsupported("truncated element")
        if length == _UNDEFINED:
            # store the items without the sequence delimiter, as a defined-length value
            value = data[value_pos : end - 8]
            length = len(value)
        else:
            value = data[value_pos:end]
        key = BaseTag(tag)
        raw[key] = _new_tuple(RawDataElement, (key, vr, length, value, value_pos, implicit, True))
        pos = end
    return raw, pos, None


def _element(data: bytes, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
    """(end, VR, length, value offset) of the element at ``pos``."""
    vr: str | None
    if implicit:
        length = _U32(data, pos + 4)[0]
        value_pos = pos + 8
        vr = None
    else:
        vr_bytes = data[pos + 4 : pos + 6]
        if not (vr_bytes.isalpha() and vr_bytes.isupper()):
            raise _Unsupported("VR does not match the transfer syntax")
        if vr_bytes in _LONG_VRS:
            length = _U32(data, pos + 8)[0]
            value_pos = pos + 12
        else:
            length = _U16(data, pos + 6)[0]
            value_pos = pos + 8
        vr = vr_bytes.decode("ascii")
    if length == _UNDEFINED:
        # Only a sequence may have an undefined length here (UN with undefined length holds implicit VR
        # items inside an explicit VR dataset: left to pydicom).
        if vr not in (None, "SQ"):
            raise _Unsupported("undefined length outside a sequence")
        return _skip_items(data, value_pos, implicit), "SQ", length, value_pos
    end = value_pos + length
    if end > len(data):
        raise _Unsupported("truncated element")
    return end, vr, length, value_pos


def _skip_items(data: bytes, pos: int, implicit: bool) -> int:
    """Walk the items of an undefined-length sequence; return the offset after its delimiter."""
    while True:
        group, elem = _TAG(data, pos)
        length = _U32(data, pos + 4)[0]
        pos += 8
        if group != 0xFFFE:
            raise _Unsupported("no item tag in a sequence")
        if elem == 0xE0DD:  # Sequence Delimitation Item
            return pos
        if elem != 0xE000:
            raise _Unsupported("unexpected delimiter in a sequence")
        if length == _UNDEFINED:
            size = len(data)
            while True:
                group, elem = _TAG(data, pos)
                if group == 0xFFFE and elem == 0xE00D:  # Item Delimitation Item
                    pos += 8
                    break
                # inline fast path of ``_element`` for defined lengths (implicit VR, short explicit VRs)
                if implicit:
                    length = _U32(data, pos + 4)[0]
                    end = pos + 8 + length
                elif data[pos + 4 : pos + 6] in _SHORT_VRS:
                    length = _U16(data, pos + 6)[0]
                    end = pos + 8 + length
                else:
                    length = _UNDEFINED
                if length == _UNDEFINED or end > size:
                    pos = _element(data, pos, implicit)[0]
                else:
                    pos = end
        else:
            pos += length


def sequence_items(elem: DataElement | RawDataElement) -> list[Dataset] | None:
    """The items of a sequence element still in raw form, as datasets of raw elements, or ``None``.

    Nested sequences stay raw (decoded by pydicom on access, or by this function again). ``None`` when the
    element was already decoded or its encoding is not handled here: use ``element.value`` then.
    """
    raw_items = sequence_item_elements(elem)
    if raw_items is None or not isinstance(elem, RawDataElement):
        return None
    implicit = bool(elem.is_implicit_VR)
    items: list[Dataset] = []
    for raw in raw_items:
        item = Dataset(raw)
        item.set_original_encoding(implicit, True)
        items.append(item)
    return items


def sequence_item_elements(
    elem: DataElement | RawDataElement,
) -> list[dict[BaseTag, DataElement | RawDataElement]] | None:
    """Like :func:`sequence_items`, with each item as a plain ``{tag: raw element}`` dict (no dataset is
    built: cheaper when only a few elements of many items are looked at)."""
    if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes) or not elem.is_little_endian:
        return None
    if elem.VR not in ("SQ", None):
        return None
    data, implicit = elem.value, elem.is_implicit_VR
    items: list[dict[BaseTag, DataElement | RawDataElement]] = []
    pos = 0
    try:
        while pos + 8 <= len(data):
            group, tag_elem = _TAG(data, pos)
            length = _U32(data, pos + 4)[0]
            pos += 8
            if group != 0xFFFE:
                return None
            if tag_elem == 0xE0DD:  # Sequence Delimitation Item
                break
            if tag_elem != 0xE000:
                return None
            if length == _UNDEFINED:
                raw, pos, _ = _scan(data, pos, implicit=implicit, only_group=None)
            else:
                raw, _, _ = _scan(data, pos, implicit=implicit, only_group=None, end_of_data=pos + length)
                pos += length
            items.append(raw)
    except (_Unsupported, struct.error, IndexError, ValueError):
        return None
    return items
