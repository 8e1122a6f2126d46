"""The one DICOM byte walker, as the loader's scanners and the C-STORE admission check use it.

Both modes of :class:`conversion.dicomwalk.Walker` are exercised on the same bytes: the loader's
(``strict_vrs``, used by ``scan_file`` and ``read_header``) and the structure check of received data sets
(used by ``dicom_node.receiving.admission.check_encoding``). Whatever the bytes, a walk returns or raises
:class:`~conversion.dicomwalk.WalkError`; the loader falls back on pydicom and the admission check refuses
with Cannot understand, nothing else.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from conversion.dicomscan import read_header
from conversion.dicomwalk import (
    MAX_DEPTH,
    PIXEL_KEYS,
    UnsupportedEncoding,
    Walker,
    WalkError,
    element_header,
    file_meta,
    key_of,
)
from conversion.rawheader import scan_file
from dicom_node.receiving.admission import MalformedDatasetError, check_encoding
from tests.support.mutations import EDIT_KINDS, mutate_bytes
from tests.support.paths import TEST_MRI

XA10 = TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol" / "6_1.dcm"
PD = sorted(
    (TEST_MRI / "prostatex" / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276").glob("*.dcm")
)[0]
MR_SMALL = Path(str(get_testdata_file("MR_small.dcm")))
SOURCES = [XA10, PD, MR_SMALL]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _walk(data: bytes, implicit: bool, strict: bool, little: bool = True) -> None:
    """Walk the data set of a Part 10 file (or of bare data set bytes) to its end."""
    start = file_meta(data, strict_vrs=strict)[1] if data[128:132] == b"DICM" else 0
    Walker[None](data, implicit=implicit, little=little, strict_vrs=strict).elements(start, len(data))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_both_modes_walk_real_files_to_their_end(path: Path) -> None:
    data = path.read_bytes()
    implicit = pydicom.dcmread(path, stop_before_pixels=True).original_encoding[0]
    for strict in (True, False):
        _walk(data, bool(implicit), strict)
    meta, start = file_meta(data)
    walker: Walker[None] = Walker(data, implicit=bool(implicit))
    located, _, pixel_offset = walker.elements(start, len(data), stop_keys=PIXEL_KEYS)
    assert pixel_offset is not None and data[pixel_offset : pixel_offset + 4] == b"\xe0\x7f\x10\x00"
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    assert set(located) == {int(tag) for tag in reference.keys()}
    assert set(meta) == {int(tag) for tag in reference.file_meta.keys()}


EDITS = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from(EDIT_KINDS),
        st.one_of(
            st.binary(min_size=1, max_size=6), st.just(b"\xff\xff\xff\xff"), st.just(b"\xfe\xff\x0d\xe0")
        ),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(source=st.sampled_from(SOURCES), edits=EDITS)
def test_damaged_bytes_give_a_walk_error_or_a_result_in_every_reader(
    source: Path, edits: list[tuple[float, str, bytes]]
) -> None:
    """The loader's scanners and the admission check on the same damaged bytes: a result, ``None`` (left to
    pydicom), ``EOFError`` (read more) or a refusal naming the problem; never another exception."""
    data = mutate_bytes(source.read_bytes(), edits, start=132)
    for implicit in (False, True):
        for strict in (True, False):
            try:
                _walk(data, implicit, strict)
            except UnsupportedEncoding:
                assert strict
            except WalkError as exc:
                assert str(exc)
    header = read_header(data)
    assert header is None or isinstance(header[0], Dataset)
    for complete in (True, False):
        try:
            scan_file(data, complete)
        except EOFError:
            assert not complete
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
        try:
            check_encoding(data, syntax)
        except MalformedDatasetError as exc:
            assert exc.message


def test_seeded_damage_is_refused_by_the_admission_check_where_the_walk_fails() -> None:
    """The admission check refuses exactly what the structure walk refuses (one walker, one verdict)."""
    rng = random.Random(7)
    refused = 0
    for _ in range(150):
        data = bytearray(rng.choice(SOURCES).read_bytes())
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(132, len(data))
            data[pos : pos + 4] = rng.choice(
                [b"\xff\xff\xff\xff", bytes(rng.randrange(256) for _ in range(4))]
            )
        try:
            _walk(bytes(data), False, strict=False)
            walk_ok = True
        except WalkError:
            walk_ok = False
        try:
            check_encoding(bytes(data), ExplicitVRLittleEndian)
            admitted = True
        except MalformedDatasetError:
            admitted = False
        assert walk_ok == admitted
        refused += not admitted
    assert refused > 0  # the damage is found, not only walked over


def _element(tag: int, vr: bytes, value: bytes, *, big: bool = False, undefined: bool = False) -> bytes:
    order = ">" if big else "<"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF) + vr
    length = 0xFFFFFFFF if undefined else len(value)
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return head + b"\0\0" + struct.pack(order + "L", length) + value
    return head + struct.pack(order + "H", length) + value


def _item(body: bytes, *, big: bool = False) -> bytes:
    order = ">" if big else "<"
    return (
        struct.pack(order + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + body
        + struct.pack(order + "HHL", 0xFFFE, 0xE00D, 0)
    )


def _end(big: bool = False) -> bytes:
    return struct.pack((">" if big else "<") + "HHL", 0xFFFE, 0xE0DD, 0)


def _nested(depth: int) -> bytes:
    body = _element(0x00100010, b"PN", b"DOE^J ")
    for _ in range(depth):
        body = _element(0x00081140, b"SQ", _item(body) + _end(), undefined=True)
    return body


def test_nesting_is_bounded() -> None:
    fine = _nested(MAX_DEPTH - 1)
    _walk(fine, False, strict=True)
    check_encoding(fine, ExplicitVRLittleEndian)
    deep = _nested(MAX_DEPTH + 5)
    for strict in (True, False):
        with pytest.raises(WalkError, match="nested deeper"):
            _walk(deep, False, strict)
    with pytest.raises(MalformedDatasetError, match="nested deeper"):
        check_encoding(deep, ExplicitVRLittleEndian)


def test_big_endian_structure_is_checked() -> None:
    name = _element(0x00100010, b"PN", b"DOE^J ", big=True)
    sequence = _element(0x00081140, b"SQ", _item(name, big=True) + _end(big=True), big=True, undefined=True)
    data = name + sequence + _element(0x7FE00010, b"OW", b"\x00\x01" * 8, big=True)
    check_encoding(data, ExplicitVRBigEndian)
    with pytest.raises(MalformedDatasetError, match=r"value of element \(7FE0,0010\)"):
        check_encoding(data[:-2], ExplicitVRBigEndian)
    with pytest.raises(MalformedDatasetError, match="truncated or inconsistent length"):
        check_encoding(data, ExplicitVRLittleEndian)  # the lengths read little endian do not fit


def test_encapsulated_pixel_data_fragments_are_walked() -> None:
    offsets = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
    fragment = struct.pack("<HHL", 0xFFFE, 0xE000, 4) + b"JPEG"
    pixels = _element(0x7FE00010, b"OB", offsets + fragment + _end(), undefined=True)
    data = _element(0x00100010, b"PN", b"DOE^J ") + pixels
    check_encoding(data, ExplicitVRLittleEndian)
    with pytest.raises(MalformedDatasetError, match="pixel data fragment"):
        check_encoding(data[:-8], ExplicitVRLittleEndian)  # no Sequence Delimitation Item
    walker: Walker[None] = Walker(data, implicit=False)
    located, _, stop = walker.elements(0, len(data), stop_keys=PIXEL_KEYS)
    assert stop == len(data) - len(pixels) and set(located) == {0x00100010}


def test_undefined_length_un_is_a_structure_of_implicit_items_or_left_to_pydicom() -> None:
    inner = _item(struct.pack("<HHL", 0x0029, 0x0010, 4) + b"ABCD")  # an implicit VR element inside
    data = _element(0x00291001, b"UN", inner + _end(), undefined=True) + _element(
        0x00100010, b"PN", b"DOE^J "
    )
    _walk(data, False, strict=False)
    check_encoding(data, ExplicitVRLittleEndian)
    with pytest.raises(UnsupportedEncoding):
        _walk(data, False, strict=True)


def test_delimiters_out_of_place_and_unknown_vrs() -> None:
    name = _element(0x00100010, b"PN", b"DOE^J ")
    with pytest.raises(WalkError, match="Item Delimitation Item outside an item"):
        _walk(name + struct.pack("<HHL", 0xFFFE, 0xE00D, 0), False, strict=False)
    with pytest.raises(WalkError, match=r"\(FFFE,E000\) outside a sequence"):
        _walk(struct.pack("<HHL", 0xFFFE, 0xE000, 0) + name, True, strict=False)
    odd = _element(0x00091010, b"ZZ", b"1234")
    _walk(odd + name, False, strict=False)  # any two letters are a VR with a 16-bit length
    with pytest.raises(UnsupportedEncoding, match=r"\(0009,1010\)"):
        _walk(odd + name, False, strict=True)
    assert element_header(odd, 0, implicit=False, little=True) == (0x00091010, "ZZ", 8, 4)
    with pytest.raises(WalkError):
        element_header(odd[:6], 0, implicit=False, little=True)


def test_split_items_keep_the_wanted_elements_of_each_item() -> None:
    ds = pydicom.dcmread(XA10, stop_before_pixels=True)
    data = XA10.read_bytes()
    start = file_meta(data)[1]
    per_frame = key_of(0x52009230)
    wanted = frozenset({key_of(0x00209111)})

    def item(found: dict[int, tuple[str | None, int, int]], _sequences: dict[int, list[object]]) -> object:
        return sorted(found)

    walker: Walker[object] = Walker(data, implicit=False, make_item=item, item_filters={per_frame: wanted})
    sequences: dict[int, list[object]] = {}
    walker.elements(start, len(data), frozenset({per_frame}), sequences=sequences, stop_keys=PIXEL_KEYS)
    items = sequences[0x52009230]
    assert len(items) == len(ds.PerFrameFunctionalGroupsSequence)
    assert all(found == [0x00209111] for found in items)
    with pytest.raises(TypeError):
        Walker[None](data, implicit=False).elements(
            start, len(data), None, sequences={}, stop_keys=PIXEL_KEYS
        )


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
        ("MR_small.dcm", ExplicitVRLittleEndian),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian),
    ],
)
def test_pydicoms_files_walk_in_each_transfer_syntax(name: str, syntax: str) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    _walk(data, implicit, strict=False, little=little)
    check_encoding(data, syntax)
    assert (scan_file(data, complete=True) is None) == (not little)
    with pytest.raises(MalformedDatasetError, match="truncated or inconsistent length"):
        check_encoding(data[:-10], syntax)  # cut in the last element (trailing padding after the pixels)
