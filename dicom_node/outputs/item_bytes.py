"""Elements, items and sequences as pydicom's writer writes them in explicit VR little endian (items and
sequences of defined length): the framing shared by the outputs that hold parts of their datasets as the
bytes they are written with (the SEG's per-frame items, the SR's content, the RTSTRUCT's sequences, the
overlay series' writer). pydicom writes such a part as it is, in a dataset marked :func:`as_written`, and
parses it when it is read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

#: An item's tag (FFFE,E000), little endian.
ITEM_TAG = struct.pack("<HH", 0xFFFE, 0xE000)


def item(body: bytes) -> bytes:
    """A sequence item of defined length holding ``body`` (its elements' bytes)."""
    return b"".join((ITEM_TAG, struct.pack("<I", len(body)), body))


def sequence(tag: int, value: bytes) -> bytes:
    """A sequence element of defined length holding ``value`` (its items' bytes)."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(value)) + value


def element(tag: int, vr: str, value: str | bytes) -> bytes:
    """An element (ASCII text or bytes), its value padded to even length (UI with a null byte, others
    with a space). A value too long for a 2-byte length is written as UN, as pydicom does (PS3.5 6.2.2)."""
    if vr == "SQ":
        return sequence(tag, value.encode("ascii") if isinstance(value, str) else value)
    data = value.encode("ascii") if isinstance(value, str) else value
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    group, number = tag >> 16, tag & 0xFFFF
    if len(data) > 0xFFFF:
        return struct.pack("<HH2sHI", group, number, b"UN", 0, len(data)) + data
    return struct.pack("<HH2sH", group, number, vr.encode("ascii"), len(data)) + data


def dataset_item(
    dataset: Dataset, encode: Callable[[BaseTag, DataElement | RawDataElement, Dataset], bytes]
) -> bytes:
    """An item holding ``dataset``'s elements in tag order, each encoded by ``encode(tag, element,
    dataset)``; retired group lengths are left out (PS3.5 7.2), as pydicom does."""
    parts = [
        encode(tag, dataset.get_item(tag), dataset)
        for tag in sorted(dataset.keys(), key=int)
        if not (tag.element == 0 and tag.group > 6)
    ]
    return item(b"".join(parts))


def held_sequence(tag: int, value: bytes) -> RawDataElement:
    """A sequence element holding ``value`` (its items' bytes) as it is written."""
    return RawDataElement(Tag(tag), "SQ", len(value), value, 0, False, True)


def as_written(dataset: Dataset) -> Dataset:
    """Mark ``dataset`` as encoded in explicit VR little endian with its own character set, so that
    pydicom's writer writes its raw elements as they are instead of parsing every value first."""
    dataset.set_original_encoding(False, True, dataset._character_set)
    return dataset
