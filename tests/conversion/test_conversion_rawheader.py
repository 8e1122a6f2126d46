"""The loader's header scanner reads the values pydicom reads, or leaves the file (or sequence) to pydicom."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conversion_reference import folder_params
from pydicom.dataelem import DataElement

from conversion import NotSegmentableError, headers, load_series
from conversion.headers import SourceImage, diffusion_b_value, frames_of, read_sources
from conversion.rawheader import TOP_LEVEL_TAGS, DatasetView, NeedsPydicom, RawHeader, scan_file
from tests.support.paths import SHARED_MRI, TEST_MRI

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

FMAP = TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP" / "IM_0027_fMAP.dcm"
XA10 = TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol" / "6_1.dcm"
DWI = "ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284"
_SEQUENCES = {0x52009229, 0x52009230}


def _frame_facts(frames: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            f.frame,
            f.sop_instance_uid,
            f.sop_class_uid,
            f.instance_number,
            f.rows,
            f.columns,
            None if f.orientation is None else tuple(f.orientation),
            None if f.position is None else tuple(f.position),
            f.pixel_spacing,
            f.slope,
            f.intercept,
            f.attrs,
        )
        for f in frames
    ]


def _check_folder(folder: Path) -> None:
    for path in sorted(folder.glob("*.dcm")):
        data = path.read_bytes()
        reference = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        scanned = scan_file(data, complete=True)
        if reference.original_encoding[1] is False:  # big endian: left to pydicom
            assert scanned is None, path
            continue
        assert scanned is not None, path
        ours, theirs = scanned.header, DatasetView(reference)
        for tag in TOP_LEVEL_TAGS:
            assert ours.has(tag) == theirs.has(tag), (path, f"{tag:08X}")
            if tag in _SEQUENCES or not ours.has(tag):
                continue
            assert ours.text(tag) == theirs.text(tag) or ours.number(tag) == theirs.number(tag), (
                path,
                f"{tag:08X}",
            )
            assert ours.number(tag) == theirs.number(tag) or ours.number(tag) is theirs.number(tag) is None
        assert diffusion_b_value(ours) == diffusion_b_value(theirs), path
        assert str(scanned.transfer_syntax) == str(reference.file_meta.TransferSyntaxUID)
        # the frames described from the scanned bytes equal those described from pydicom's dataset
        (source,) = read_sources([path])
        assert isinstance(source.view, RawHeader)
        expected = frames_of(0, SourceImage.from_dataset(reference, reference.file_meta.TransferSyntaxUID))
        assert _frame_facts(frames_of(0, source)) == _frame_facts(expected), path
        # the complete header, parsed on demand from the kept bytes, is pydicom's header
        assert list(source.header.keys()) == list(reference.keys())
        assert source.header.SOPInstanceUID == reference.SOPInstanceUID


@pytest.mark.parametrize("folder", folder_params(TEST_MRI, "tests-data"))
def test_scanned_values_equal_pydicom_on_the_subset(folder: Path) -> None:
    _check_folder(folder)


@pytest.mark.parametrize("folder", folder_params(SHARED_MRI, "shared"))
def test_scanned_values_equal_pydicom_on_the_full_set(folder: Path) -> None:
    _check_folder(folder)


def test_headers_longer_than_the_first_read_are_read_in_full() -> None:
    data = FMAP.read_bytes()
    whole = scan_file(data, complete=True)
    assert whole is not None and whole.pixel_offset is not None and whole.pixel_offset > 32768
    with pytest.raises(EOFError):
        scan_file(data[:32768], complete=False)
    assert len(data) > headers._WHOLE_FILE > headers._FIRST_READ  # read in two parts
    (source,) = read_sources([FMAP])
    assert source.pixel_offset == whole.pixel_offset
    assert source.header_bytes == data[: whole.pixel_offset]
    # the items split while scanning refer to the header's bytes only, not to the whole file's
    assert isinstance(source.view, RawHeader)
    per_frame = source.view.items(0x52009230)
    assert len(per_frame) == 64
    assert all(isinstance(item, RawHeader) and item.data is source.header_bytes for item in per_frame)


def test_unusual_encodings_are_left_to_pydicom(tmp_path: Path) -> None:
    data = XA10.read_bytes()
    assert scan_file(data[132:], complete=True) is None  # no preamble
    assert scan_file(data[:700], complete=True) is None  # cut inside the header
    fmap = FMAP.read_bytes()
    for cut in (60000, 100000, 145000):  # cut inside undefined-length per-frame items
        assert scan_file(fmap[:cut], complete=True) is None
        with pytest.raises(EOFError):
            scan_file(fmap[:cut], complete=False)
    assert scan_file(b"not dicom", complete=True) is None
    # a deflated file: read by pydicom, same frames
    ds = pydicom.dcmread(XA10)
    deflated = tmp_path / "deflated.dcm"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    assert scan_file(deflated.read_bytes(), complete=True) is None
    (source,) = read_sources([deflated])
    assert isinstance(source.view, DatasetView)
    (original,) = read_sources([XA10])
    assert _frame_facts(frames_of(0, source)) == _frame_facts(frames_of(0, original))


def _un_undefined_length_in_first_frame_item(tmp_path: Path, defined_outside: bool) -> Path:
    """XA10 with a private element of VR UN and undefined length (implicit VR items inside, as a PACS
    writes an unknown private sequence) in its first per-frame functional group item."""
    ds = pydicom.dcmread(XA10)
    # defined lengths around it: the top-level scan steps over the per-frame sequence without entering it
    ds[0x52009230].is_undefined_length = not defined_outside
    for frame_item in ds.PerFrameFunctionalGroupsSequence:
        frame_item.is_undefined_length_sequence_item = not defined_outside
    item = ds.PerFrameFunctionalGroupsSequence[0]
    item.add(DataElement(0x00290010, "LO", "SEGNODE TEST"))
    inner = struct.pack("<HHL", 0x0029, 0x0010, 4) + b"ABCD"  # implicit VR element
    items = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
    marker = b"MARKER__"
    item.add(DataElement(0x00291001, "UN", marker + items))
    out = tmp_path / "un_undefined.dcm"
    ds.save_as(out, enforce_file_format=True)
    raw = out.read_bytes()
    head = struct.pack("<HH", 0x0029, 0x1001) + b"UN\x00\x00"
    at = raw.index(head)
    length = struct.unpack_from("<L", raw, at + 8)[0]
    assert raw[at + 12 : at + 20] == marker
    patched = (
        raw[: at + 8]
        + struct.pack("<L", 0xFFFFFFFF)
        + raw[at + 20 : at + 12 + length]
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        + raw[at + 12 + length :]
    )
    out.write_bytes(patched)
    return out


@pytest.mark.parametrize("defined_outside", [True, False], ids=["items-to-pydicom", "file-to-pydicom"])
def test_functional_groups_the_scanner_cannot_split_are_read_by_pydicom(
    tmp_path: Path, defined_outside: bool
) -> None:
    path = _un_undefined_length_in_first_frame_item(tmp_path, defined_outside)
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    assert len(reference.PerFrameFunctionalGroupsSequence) == int(reference.NumberOfFrames)
    (source,) = read_sources([path])
    if defined_outside:  # the top level scans; the per-frame items go to pydicom
        assert isinstance(source.view, RawHeader)
        with pytest.raises(NeedsPydicom):
            source.view.items(0x52009230)
    else:  # the scanner meets the element while walking the top level: the whole file goes to pydicom
        assert isinstance(source.view, DatasetView)
    (original,) = read_sources([XA10])
    assert _frame_facts(frames_of(0, source)) == _frame_facts(frames_of(0, original))
    (volume,) = load_series([path])
    (expected,) = load_series([XA10])
    assert (volume.voxels == expected.voxels).all()


def test_damaged_headers_are_unreadable_with_the_file_and_element_named(tmp_path: Path) -> None:
    """Damage found by fuzzing: an unknown VR in the file meta (pydicom's reader refuses the file) and an
    unknown VR in a functional group (pydicom fails when the element is read) give ``unreadable``."""
    dwi = sorted((TEST_MRI / "prostatex" / "ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284").glob("*.dcm"))[
        0
    ]
    data = dwi.read_bytes()
    at = data.index(b"\x02\x00\x10\x00UI")  # Transfer Syntax UID
    meta = tmp_path / "meta.dcm"
    meta.write_bytes(data[: at + 4] + b"U\x0c" + data[at + 6 :])
    with pytest.raises(NotSegmentableError) as caught:
        load_series([meta])
    assert caught.value.reason == "unreadable" and "file meta.dcm" in caught.value.message
    assert str(tmp_path) not in caught.value.message  # the file, not the folder (the node's spool)

    data = FMAP.read_bytes()
    at = data.index(b"\x18\x00\x82\x90FD")  # Effective Echo Time in the first per-frame item
    fg = tmp_path / "functional_group.dcm"
    fg.write_bytes(data[: at + 4] + b"ND" + data[at + 6 :])
    with pytest.raises(NotSegmentableError) as caught:
        load_series([fg])
    assert caught.value.reason == "unreadable"
    assert "file functional_group.dcm" in caught.value.message and "(0018,9082)" in caught.value.message
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_damage_to_header_bytes_gives_volumes_or_a_reason(tmp_path: Path, seed: int) -> None:
    """Byte changes, all-ones lengths and cut-outs anywhere in the headers of an Enhanced and a classic file
    (seeded, repeatable): the loader returns volumes or raises NotSegmentableError, nothing else."""
    rng = random.Random(seed)
    sources = [XA10, FMAP, sorted((TEST_MRI / "prostatex" / DWI).glob("*.dcm"))[0]]
    for n in range(80):
        source = rng.choice(sources)
        data = bytearray(source.read_bytes())
        scanned = scan_file(bytes(data), complete=True)
        assert scanned is not None and scanned.pixel_offset is not None
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(132, scanned.pixel_offset)
            kind = rng.random()
            if kind < 0.6:
                data[pos] = rng.randrange(256)
            elif kind < 0.8:
                data[pos : pos + 4] = b"\xff\xff\xff\xff"
            else:
                del data[pos : pos + rng.randint(1, 50)]
        damaged = tmp_path / f"damaged_{n}.dcm"
        damaged.write_bytes(bytes(data))
        try:
            load_series([damaged])
        except NotSegmentableError as exc:
            assert exc.reason and exc.message
