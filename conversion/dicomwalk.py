"""The one walker of encoded DICOM bytes: elements, sequence items and pixel data fragments, by their lengths.

Three readers go through the bytes of a data set without building pydicom objects, and all three walk with
:class:`Walker`:

* :func:`conversion.rawheader.scan_file` notes where the attributes the loader reads lie in a Part 10 file
  (the wanted elements; undefined-length sequences split into items on the way) and stops at Pixel Data;
* :func:`conversion.dicomscan.read_header` turns every element of a header into a pydicom raw element;
* :func:`dicom_node.receiving.admission.check_encoding` checks on the C-STORE path that every declared
  length of a received data set fits (encapsulated pixel data included), in any transfer syntax.

A walk reads each element's tag, VR and length and jumps over its value, walking undefined-length sequences
and items to find their end (PS3.5 7.5); :class:`WalkError` names the first element that does not fit and
its byte offset. Two modes:

* ``strict_vrs=True`` (the readers of :mod:`conversion`): only the VRs of PS3.5 table 6.2-1 and undefined
  lengths only on sequences. Anything else raises :class:`UnsupportedEncoding`, and the caller reads the
  file with pydicom, which is more tolerant;
* ``strict_vrs=False`` (the structure check): any two letters are a VR with a 16-bit length, and an
  undefined-length UN holds implicit VR little endian items (PS3.5 section 6.2.2).

Speed: one little-endian 32-bit load of a tag gives ``element << 16 | group`` (a *key*, :func:`key_of`);
wanted tags are given as keys, so the common element costs one ``struct`` call and a few comparisons. Big
endian data (only the structure check reads it) is read into the same key form.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Generic, TypeVar

#: The 32-bit length that means "undefined" (PS3.5 section 7.1).
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Item, Item Delimitation Item, Sequence Delimitation Item (PS3.5 section 7.5).
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Explicit VRs with a 16-bit length (PS3.5 table 7.1-2).
SHORT_VRS = frozenset(
    ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL")
    + ("SS", "ST", "TM", "UI", "UL", "US")
)
#: Explicit VRs with two reserved bytes and a 32-bit length (PS3.5 table 7.1-1).
LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Nesting depth of sequences beyond which a walk stops (keeps its recursion bounded).
MAX_DEPTH = 64

#: What a walk finds: tag -> (VR or ``None`` in implicit VR, value offset, value length). The length of an
#: undefined-length sequence is that of its items, without the Sequence Delimitation Item.
Located = dict[int, tuple[str | None, int, int]]
#: What a walk makes of one sequence item (its elements and the items of its split sequences, by tag).
Item = TypeVar("Item")
_Head = Callable[[bytes, int], tuple[int, int, int]]
_ItemHead = Callable[[bytes, int], tuple[int, int]]
_U32 = Callable[[bytes, int], tuple[int]]


class WalkError(Exception):
    """The bytes do not hold a well-formed data set; the message names the element and the byte offset."""


class UnsupportedEncoding(WalkError):
    """Well-formed maybe, but in an encoding a ``strict_vrs`` walk leaves to pydicom (a VR it does not know,
    an undefined length on an element that is not a sequence)."""


def key_of(tag: int) -> int:
    """The key of ``tag`` (``element << 16 | group``, as one little-endian load of its bytes gives it).

    The same function turns a key back into its tag."""
    return ((tag & 0xFFFF) << 16) | (tag >> 16)


def tag_text(tag: int) -> str:
    """``(GGGG,EEEE)``."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@lru_cache(maxsize=64)
def fast_path_implicit(transfer_syntax: str) -> bool | None:
    """Whether a data set in ``transfer_syntax`` is implicit VR (``True``) or explicit VR little endian
    (``False``, native or encapsulated pixel data), or ``None`` when the readers of :mod:`conversion`
    leave it to pydicom (big endian, deflate, unknown)."""
    from pydicom.uid import UID

    if transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN:
        return True
    uid = UID(transfer_syntax)
    if transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN or (
        uid.is_transfer_syntax and uid.is_encapsulated and not uid.is_deflated
    ):
        return False
    return None


def _code(vr: str) -> int:
    """A VR's two letters read as a little-endian 16-bit number (the middle field of the header load)."""
    return int.from_bytes(vr.encode("ascii"), "little")


_SHORT_CODES = {_code(vr): vr for vr in SHORT_VRS}
_LONG_CODES = {_code(vr): vr for vr in LONG_VRS}
_SQ, _UN = "SQ", "UN"
_ITEM_KEY, _ITEM_END_KEY, _SEQUENCE_END_KEY = key_of(ITEM), key_of(ITEM_END), key_of(SEQUENCE_END)
_DELIMITER_KEYS = frozenset((_ITEM_KEY, _ITEM_END_KEY, _SEQUENCE_END_KEY))
_PIXEL_DATA_KEY = key_of(PIXEL_DATA)
#: Keys at which a walk that stops before the pixels stops.
PIXEL_KEYS = frozenset(key_of(t) for t in PIXEL_TAGS)
_NOTHING: frozenset[int] = frozenset()
_NO_ITEM_END = "an undefined-length item ends without its Item Delimitation Item"

_LE_HEAD: _Head = struct.Struct("<LHH").unpack_from  # key, VR code (or low half of a 32-bit length), length
_LE_ITEM: _ItemHead = struct.Struct("<LL").unpack_from  # key, 32-bit length
_LE_U32: _U32 = struct.Struct("<L").unpack_from
_BE_PARTS = struct.Struct(">HHHH").unpack_from
_BE_U32: _U32 = struct.Struct(">L").unpack_from
_BE_ITEM_PARTS = struct.Struct(">HHL").unpack_from


def _be_head(data: bytes, pos: int) -> tuple[int, int, int]:
    group, element, vr, length = _BE_PARTS(data, pos)
    return (element << 16) | group, ((vr & 0xFF) << 8) | (vr >> 8), length


def _be_item(data: bytes, pos: int) -> tuple[int, int]:
    group, element, length = _BE_ITEM_PARTS(data, pos)
    return (element << 16) | group, length


def _short(what: str, pos: int, count: int, end: int) -> WalkError:
    return WalkError(
        f"{what} at byte {pos} needs {count} bytes but only {max(end - pos, 0)} remain "
        "(truncated or inconsistent length)"
    )


def _misplaced(key: int, pos: int) -> WalkError:
    if key == _ITEM_END_KEY:
        return WalkError(f"Item Delimitation Item outside an item at byte {pos}")
    return WalkError(f"{tag_text(key_of(key))} outside a sequence at byte {pos}")


def _not_an_item(key: int, pos: int, what: str) -> WalkError:
    return WalkError(f"{tag_text(key_of(key))} where a {what} was expected at byte {pos}")


def _other_vr(
    data: bytes, little: bool, strict_vrs: bool, key: int, vr_code: int, length: int, pos: int, end: int
) -> tuple[str, int, int]:
    """(VR, value offset, length) of an explicit VR element whose VR has no 16-bit length: a VR with a
    32-bit length, else (``strict_vrs``) :class:`UnsupportedEncoding`, else any two bytes as a VR with a
    16-bit length."""
    vr = _LONG_CODES.get(vr_code)
    if vr is not None:
        if pos + 12 > end:
            raise _short(f"element {tag_text(key_of(key))} header", pos, 12, end)
        (length,) = (_LE_U32 if little else _BE_U32)(data, pos + 8)
        return vr, pos + 12, length
    if strict_vrs:
        raise UnsupportedEncoding(f"no valid explicit VR in element {tag_text(key_of(key))} at byte {pos}")
    return vr_code.to_bytes(2, "little").decode("latin-1"), pos + 8, length


class Walker(Generic[Item]):
    """Walks the data set in ``data``; one per buffer and encoding.

    ``make_item`` builds each sequence item that :meth:`items_in` returns and :meth:`elements` splits (from
    its located elements and the items of its split sequences); ``item_filters`` gives, by the key of a
    split sequence, the keys its items keep (absent: all).
    """

    __slots__ = ("data", "implicit", "little", "strict_vrs", "make_item", "item_filters", "_readers")

    def __init__(
        self,
        data: bytes,
        *,
        implicit: bool,
        little: bool = True,
        strict_vrs: bool = True,
        make_item: Callable[[Located, dict[int, list[Item]]], Item] | None = None,
        item_filters: Mapping[int, frozenset[int]] | None = None,
    ) -> None:
        if implicit and not little:
            raise ValueError("there is no implicit VR big endian transfer syntax")
        self.data = data
        self.implicit = implicit
        self.little = little
        self.strict_vrs = strict_vrs
        self.make_item = make_item
        self.item_filters: Mapping[int, frozenset[int]] = item_filters or {}
        #: Element header, item header and 32-bit length readers of the byte order.
        self._readers: tuple[_Head, _ItemHead, _U32] = (
            (_LE_HEAD, _LE_ITEM, _LE_U32) if little else (_be_head, _be_item, _BE_U32)
        )

    # -- elements ---------------------------------------------------------------------------------------

    def elements(
        self,
        pos: int,
        end: int,
        wanted: frozenset[int] | None = None,
        private_groups: frozenset[int] = _NOTHING,
        sequences: dict[int, list[Item]] | None = None,
        stop_keys: frozenset[int] = _NOTHING,
    ) -> tuple[Located, int, int | None]:
        """Walk the elements of a data set from ``pos`` to ``end``.

        Parameters
        ----------
        wanted
            Keys (:func:`key_of`) of the elements whose location is kept; ``None``: all.
        private_groups
            Groups whose elements are all kept.
        sequences
            Where the kept undefined-length sequences are split into items (by tag); ``None``: not split.
        stop_keys
            Keys at which the walk stops (:data:`PIXEL_KEYS` for a header).

        Returns
        -------
        tuple
            (kept elements, offset after the last element walked, offset of the element at a stop key or
            ``None``).

        Raises
        ------
        WalkError
            A length that does not fit, a delimiter out of place, sequences nested too deep.
        """
        return self._elements(pos, end, wanted, private_groups, sequences, 0, False, stop_keys)

    def _elements(
        self,
        pos: int,
        end: int,
        wanted: frozenset[int] | None,
        private_groups: frozenset[int],
        sequences: dict[int, list[Item]] | None,
        depth: int,
        in_item: bool,
        stop_keys: frozenset[int],
    ) -> tuple[Located, int, int | None]:
        """:meth:`elements`, at a nesting ``depth``; in an undefined-length item (``in_item``) up to and
        including its Item Delimitation Item."""
        data, implicit, little = self.data, self.implicit, self.little
        head, _, u32 = self._readers
        short_codes, long_codes, undefined = _SHORT_CODES, _LONG_CODES, UNDEFINED_LENGTH
        found: Located = {}
        vr: str | None = None
        try:
            while pos < end:
                key, vr_code, length = head(data, pos)
                if implicit:
                    if key in stop_keys:
                        return found, pos, pos
                    if key & 0xFFFF == 0xFFFE and key in _DELIMITER_KEYS:
                        if key == _ITEM_END_KEY and in_item:
                            return found, pos + 8, None
                        raise _misplaced(key, pos)
                    length = vr_code | (length << 16)  # the 32-bit length, read as two 16-bit halves
                    value_pos = pos + 8
                else:
                    vr = short_codes.get(vr_code)
                    if vr is not None:  # the common case: a VR with a 16-bit length
                        value_pos = pos + 8
                    elif (vr := long_codes.get(vr_code)) is not None:  # 2 reserved bytes, 32-bit length
                        if key in stop_keys:
                            return found, pos, pos
                        (length,) = u32(data, pos + 8)
                        value_pos = pos + 12
                    else:
                        if key in _DELIMITER_KEYS:
                            if key == _ITEM_END_KEY and in_item:
                                return found, pos + 8, None
                            raise _misplaced(key, pos)
                        vr, value_pos, length = _other_vr(
                            data, little, self.strict_vrs, key, vr_code, length, pos, end
                        )
                keep = wanted is None or key in wanted or (private_groups and key & 0xFFFF in private_groups)
                if length == undefined:  # (vr is None in implicit VR: never set there)
                    next_pos = self._undefined_length(
                        key, vr, value_pos, end, depth, sequences if keep else None
                    )
                    if keep:  # a sequence: its items, without the Sequence Delimitation Item
                        found[((key & 0xFFFF) << 16) | (key >> 16)] = (
                            vr or _SQ,
                            value_pos,
                            next_pos - 8 - value_pos,
                        )
                    pos = next_pos
                    continue
                next_pos = value_pos + length
                if next_pos > end:
                    what = f"value of element {tag_text(key_of(key))} ({length} bytes)"
                    raise _short(what, value_pos, length, end)
                if keep:
                    found[((key & 0xFFFF) << 16) | (key >> 16)] = (vr, value_pos, length)
                pos = next_pos
        except struct.error:  # fewer than 8 bytes left for an element header
            raise _short("element header", pos, 8, end) from None
        if in_item:
            raise WalkError(_NO_ITEM_END)
        return found, pos, None

    def _undefined_length(
        self,
        key: int,
        vr: str | None,
        value_pos: int,
        end: int,
        depth: int,
        split: dict[int, list[Item]] | None,
    ) -> int:
        """Walk the value of an undefined-length element; the offset after its delimiter."""
        if vr is None or vr == _SQ:
            if key == _PIXEL_DATA_KEY and vr is None:  # encapsulated pixel data in an implicit VR data set
                return self.fragments(value_pos, end)
            if split is None:
                return self.skip_items(value_pos, end, depth + 1)
            if depth >= MAX_DEPTH:
                raise WalkError(f"sequences nested deeper than {MAX_DEPTH} levels")
            items, next_pos = self._items(value_pos, end, self.item_filters.get(key), depth + 1, True, True)
            split[((key & 0xFFFF) << 16) | (key >> 16)] = items
            return next_pos
        if key == _PIXEL_DATA_KEY:
            return self.fragments(value_pos, end)
        if vr == _UN and not self.strict_vrs:  # PS3.5 6.2.2: implicit VR little endian items
            implicit: Walker[Item] = Walker(self.data, implicit=True, strict_vrs=False)
            return implicit.skip_items(value_pos, end, depth + 1)
        problem = f"element {tag_text(key_of(key))} with VR {vr!r} has an undefined length"
        raise (UnsupportedEncoding if self.strict_vrs else WalkError)(problem)

    # -- sequences and fragments ------------------------------------------------------------------------

    def skip_items(self, pos: int, end: int, depth: int = 1) -> int:
        """Walk the items of an undefined-length sequence starting at ``pos``; the offset after its
        Sequence Delimitation Item. (The element loop of :meth:`elements`, inlined and keeping nothing:
        most undefined-length items are skipped.)"""
        if depth > MAX_DEPTH:
            raise WalkError(f"sequences nested deeper than {MAX_DEPTH} levels")
        data, implicit, little, undefined = self.data, self.implicit, self.little, UNDEFINED_LENGTH
        head, item_head, u32 = self._readers
        short_codes, long_codes, strict = _SHORT_CODES, _LONG_CODES, self.strict_vrs
        try:
            while True:
                if pos + 8 > end:
                    raise _short("sequence item header", pos, 8, end)
                key, length = item_head(data, pos)
                pos += 8
                if key == _SEQUENCE_END_KEY:
                    return pos
                if key != _ITEM_KEY:
                    raise _not_an_item(key, pos - 8, "sequence item")
                if length != undefined:
                    if pos + length > end:
                        raise _short(f"sequence item ({length} bytes)", pos, length, end)
                    pos += length
                    continue
                while True:  # the elements of an undefined-length item, up to its Item Delimitation Item
                    key, vr_code, length = head(data, pos)
                    if key == _ITEM_END_KEY:
                        pos += 8
                        if pos > end:  # a value ran past the item's container (checked once per item)
                            raise WalkError(_NO_ITEM_END)
                        break
                    if implicit:
                        if key & 0xFFFF == 0xFFFE:
                            raise _misplaced(key, pos)
                        length = vr_code | (length << 16)
                        value_pos = pos + 8
                    elif vr_code in short_codes:
                        value_pos = pos + 8
                    elif vr_code in long_codes:
                        length = u32(data, pos + 8)[0]
                        value_pos = pos + 12
                    else:  # any other VR has a 16-bit length (or is refused): never an undefined one
                        if key in _DELIMITER_KEYS:
                            raise _misplaced(key, pos)
                        _, value_pos, length = _other_vr(data, little, strict, key, vr_code, length, pos, end)
                    if length == undefined:
                        vr = None if implicit else long_codes[vr_code]
                        pos = self._undefined_length(key, vr, value_pos, end, depth, None)
                    else:
                        pos = value_pos + length
        except struct.error:  # fewer than 8 bytes left for an element header
            raise _short("element header", pos, 8, end) from None

    def items_in(self, pos: int, end: int, wanted: frozenset[int] | None, split: bool) -> list[Item]:
        """The items of a sequence value lying in ``data[pos:end]`` (without its Sequence Delimitation
        Item, as :meth:`elements` gives it); ``split``: split their undefined-length sequences too."""
        return self._items(pos, end, wanted, 1, split, False)[0]

    def _items(
        self, pos: int, end: int, wanted: frozenset[int] | None, depth: int, split: bool, delimited: bool
    ) -> tuple[list[Item], int]:
        """Read items from ``pos`` up to the Sequence Delimitation Item (``delimited``) or to ``end``."""
        make_item = self.make_item
        if make_item is None:
            raise TypeError("a walker without make_item reads no items")
        data, item_head, undefined = self.data, self._readers[1], UNDEFINED_LENGTH
        items: list[Item] = []
        while delimited or pos + 8 <= end:
            if pos + 8 > end:
                raise _short("sequence item header", pos, 8, end)
            key, length = item_head(data, pos)
            pos += 8
            if key == _SEQUENCE_END_KEY:
                break
            if key != _ITEM_KEY:
                raise _not_an_item(key, pos - 8, "sequence item")
            sequences: dict[int, list[Item]] = {}
            nested = sequences if split else None
            if length == undefined:
                found, pos, _ = self._elements(pos, end, wanted, _NOTHING, nested, depth, True, _NOTHING)
            elif pos + length > end:
                raise _short(f"sequence item ({length} bytes)", pos, length, end)
            else:
                found = self._elements(pos, pos + length, wanted, _NOTHING, nested, depth, False, _NOTHING)[0]
                pos += length
            items.append(make_item(found, sequences))
        return items, pos

    def fragments(self, pos: int, end: int) -> int:
        """Walk the fragments of encapsulated pixel data, up to and including the Sequence Delimitation
        Item."""
        item_head = self._readers[1]
        while True:
            if pos + 8 > end:
                raise _short("pixel data fragment header", pos, 8, end)
            key, length = item_head(self.data, pos)
            pos += 8
            if key == _SEQUENCE_END_KEY:
                return pos
            if key != _ITEM_KEY or length == UNDEFINED_LENGTH:
                raise _not_an_item(key, pos - 8, "pixel data fragment")
            if pos + length > end:
                raise _short(f"pixel data fragment ({length} bytes)", pos, length, end)
            pos += length


def file_meta(data: bytes, strict_vrs: bool = True) -> tuple[Located, int]:
    """The File Meta Information of a Part 10 file (group 0002, explicit VR little endian, after the 128-byte
    preamble and ``DICM``) and the offset where the data set starts. :class:`WalkError` for an element that
    runs past the data or has an undefined length (or a VR not of PS3.5's, with ``strict_vrs``)."""
    size, pos = len(data), 132
    found: Located = {}
    while pos + 8 <= size:
        key, vr_code, length = _LE_HEAD(data, pos)
        if key & 0xFFFF != 0x0002:
            break
        vr = _SHORT_CODES.get(vr_code)
        value_pos = pos + 8
        if vr is None:
            vr, value_pos, length = _other_vr(data, True, strict_vrs, key, vr_code, length, pos, size)
        if length == UNDEFINED_LENGTH:
            raise WalkError(f"file meta element {tag_text(key_of(key))} has an undefined length")
        pos = value_pos + length
        if pos > size:
            raise _short(f"file meta element {tag_text(key_of(key))}", value_pos, length, size)
        found[0x00020000 | (key >> 16)] = (vr, value_pos, length)
    return found, pos


def element_header(data: bytes, pos: int, implicit: bool, little: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR or ``None`` in implicit VR, value offset, value length) of the element at ``pos``;
    :class:`WalkError` when its header runs past the data."""
    if pos + 8 > len(data):
        raise _short("element header", pos, 8, len(data))
    key, vr_code, length = (_LE_HEAD if little else _be_head)(data, pos)
    if implicit:
        return key_of(key), None, pos + 8, vr_code | (length << 16)
    vr = _SHORT_CODES.get(vr_code)
    if vr is None:
        vr, value_pos, length = _other_vr(data, little, False, key, vr_code, length, pos, len(data))
        return key_of(key), vr, value_pos, length
    return key_of(key), vr, pos + 8, length


def is_part10(data: bytes) -> bool:
    """Whether ``data`` starts with a 128-byte preamble and ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def text_value(data: bytes, located: Located, tag: int) -> str | None:
    """The value of a located ASCII element (a UID, a code string) without padding; ``None`` when absent."""
    entry = located.get(tag)
    if entry is None:
        return None
    _, pos, length = entry
    return data[pos : pos + length].decode("ascii").strip(" \x00")
