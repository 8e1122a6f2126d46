"""A fast reader of DICOM file headers (Part 10 files, little endian), with pydicom's own data model.

pydicom's reader parses every sequence item into a ``Dataset`` while reading; for MR headers (nested
referenced-image, functional-group and private sequences) that is most of the cost of loading a series.
This reader walks the elements of the main dataset once (:class:`conversion.dicomwalk.Walker`), keeps each
value as raw bytes in a pydicom ``RawDataElement`` (sequences included: pydicom decodes a raw sequence on
first access) and stops at the Pixel Data element, whose offset it returns. The result is an ordinary
:class:`pydicom.dataset.FileDataset`.

Only the common encodings take this path: a 128-byte preamble with ``DICM``, then Implicit VR Little Endian,
Explicit VR Little Endian or an encapsulated (compressed) transfer syntax. Anything else (Big Endian,
Deflate, no preamble, a VR that does not match the declared transfer syntax, a truncated file) returns
``None`` and the caller reads the file with ``pydicom.dcmread``, which is more tolerant.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.tag import BaseTag

from conversion.dicomwalk import (
    PIXEL_KEYS,
    Located,
    Walker,
    WalkError,
    fast_path_implicit,
    file_meta,
    is_part10,
    text_value,
)

#: ``tuple.__new__``: builds a ``RawDataElement`` without the Python-level ``__new__`` of the named tuple.
_new_tuple = tuple.__new__
RawElements = dict[BaseTag, DataElement | RawDataElement]


def _raw_elements(data: bytes, located: Located, implicit: bool) -> RawElements:
    """pydicom raw elements (little endian) of the elements located in ``data``."""
    raw: RawElements = {}
    for tag, (vr, pos, length) in located.items():
        key = BaseTag(tag)
        raw[key] = _new_tuple(
            RawDataElement, (key, vr, length, data[pos : pos + length], pos, implicit, True)
        )
    return raw


def read_header(data: bytes, filename: str = "") -> tuple[FileDataset, int | None] | None:
    """The header of a DICOM file (no pixel data) and the offset of its Pixel Data tag, or ``None``.

    Parameters
    ----------
    data
        The file's bytes, whole or at least up to its Pixel Data element.
    filename
        The name the returned dataset carries.

    Returns
    -------
    tuple or None
        The header and the offset of the Pixel Data element's tag (``None`` when the file has none), or
        ``None`` when the file is left to ``pydicom.dcmread`` (see the module's description).
    """
    if len(data) < 144 or not is_part10(data):
        return None
    try:
        meta_elements, pos = file_meta(data)
        transfer_syntax = text_value(data, meta_elements, 0x00020010)
        implicit = fast_path_implicit(transfer_syntax) if transfer_syntax else None
        if implicit is None:
            return None
        walker: Walker[None] = Walker(data, implicit=implicit)
        located, _, pixel_offset = walker.elements(pos, len(data), stop_keys=PIXEL_KEYS)
    except (WalkError, UnicodeDecodeError):
        return None
    meta = FileMetaDataset(Dataset(_raw_elements(data, meta_elements, False)))
    dataset = Dataset(_raw_elements(data, located, implicit))
    header = FileDataset(filename, dataset, preamble=data[:128], file_meta=meta)
    header.set_original_encoding(implicit, True)
    return header, pixel_offset


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


def sequence_item_elements(elem: DataElement | RawDataElement) -> list[RawElements] | None:
    """Like :func:`sequence_items`, with each item as a plain ``{tag: raw element}`` dict (no dataset is
    built: cheaper when only a few elements of many items are looked at)."""
    if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes) or not elem.is_little_endian:
        return None
    if elem.VR not in ("SQ", None):
        return None
    data, implicit = elem.value, bool(elem.is_implicit_VR)

    def item(found: Located, _sequences: dict[int, list[RawElements]]) -> RawElements:
        return _raw_elements(data, found, implicit)

    try:
        return Walker(data, implicit=implicit, make_item=item).items_in(0, len(data), None, split=False)
    except WalkError:
        return None
