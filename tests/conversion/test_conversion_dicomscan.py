"""The fast header reader gives exactly pydicom's dataset (sequences included) or hands over to pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from conversion_reference import folder_params
from pydicom.uid import ImplicitVRLittleEndian

from conversion.dicomscan import read_header, sequence_item_elements, sequence_items
from conversion.headers import SourceImage, frames_of
from tests.support.paths import SHARED_MRI, TEST_MRI

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def _difference(ours: pydicom.Dataset, theirs: pydicom.Dataset, where: str = "") -> str | None:
    if list(ours.keys()) != list(theirs.keys()):
        return f"{where}: different elements"
    for elem in ours:
        other = theirs[elem.tag]
        if elem.VR != other.VR:
            return f"{where}{elem.tag}: VR {elem.VR} != {other.VR}"
        if elem.VR == "SQ":
            if len(elem.value) != len(other.value):
                return f"{where}{elem.tag}: {len(elem.value)} items != {len(other.value)}"
            for n, (a, b) in enumerate(zip(elem.value, other.value, strict=True)):
                diff = _difference(a, b, f"{where}{elem.tag}[{n}].")
                if diff:
                    return diff
        elif elem.value != other.value:
            return f"{where}{elem.tag}: {elem.value!r:.80} != {other.value!r:.80}"
    return None


def _check_folder(folder: Path) -> None:
    for path in sorted(folder.glob("*.dcm")):
        reference = pydicom.dcmread(path, stop_before_pixels=True)
        scanned = read_header(path.read_bytes(), str(path))
        if reference.original_encoding[1] is False:  # big endian: pydicom's reader is used instead
            assert scanned is None
            continue
        assert scanned is not None, path
        header, offset = scanned
        assert _difference(header, reference) is None, path
        assert header.file_meta == reference.file_meta
        assert header.original_encoding[:2] == reference.original_encoding[:2]
        has_pixels = "PixelData" in pydicom.dcmread(path, specific_tags=["PixelData"])
        assert (offset is not None) == has_pixels, path
        if offset is not None:
            assert path.read_bytes()[offset : offset + 4] == b"\xe0\x7f\x10\x00"


@pytest.mark.parametrize("folder", folder_params(TEST_MRI, "tests-data"))
def test_headers_equal_pydicom_on_the_subset(folder: Path) -> None:
    _check_folder(folder)


@pytest.mark.parametrize("folder", folder_params(SHARED_MRI, "shared"))
def test_headers_equal_pydicom_on_the_full_set(folder: Path) -> None:
    _check_folder(folder)


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # Philips private UI read as implicit VR
def test_implicit_vr_with_undefined_length_nested_sequences(tmp_path: Path) -> None:
    """A real Enhanced MR object (nested functional groups) re-encoded as Implicit VR Little Endian."""
    source = TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP" / "IM_0027_fMAP.dcm"
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = tmp_path / "implicit.dcm"
    ds.save_as(out, implicit_vr=True, little_endian=True)
    raw = out.read_bytes()
    assert b"\xfe\xff\xdd\xe0" in raw  # sequences written with undefined length
    scanned = read_header(raw, str(out))
    assert scanned is not None
    assert _difference(scanned[0], pydicom.dcmread(out, stop_before_pixels=True)) is None


def test_files_it_does_not_handle_go_to_pydicom(tmp_path: Path) -> None:
    path = TEST_MRI / "prostatex" / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276" / "1-01.dcm"
    data = path.read_bytes()
    assert read_header(data) is not None
    assert read_header(data[128 + 4 :]) is None  # no preamble
    assert read_header(data[:700]) is None  # truncated inside the header
    assert read_header(b"not dicom") is None


@pytest.mark.parametrize(
    "path",
    [
        TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP" / "IM_0027_fMAP.dcm",
        TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol" / "6_1.dcm",
    ],
    ids=["philips-fmap", "siemens-xa10"],
)
def test_functional_group_items_equal_pydicom(path: Path) -> None:
    scanned = read_header(path.read_bytes(), str(path))
    assert scanned is not None
    header = scanned[0]
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    for tag in (0x52009229, 0x52009230):
        items = sequence_items(header.get_item(tag))
        assert items is not None
        assert len(items) == len(reference[tag].value)
        for ours, theirs in zip(items, reference[tag].value, strict=True):
            assert _difference(ours, theirs) is None
    decoded = header.PerFrameFunctionalGroupsSequence  # decoded by pydicom once accessed
    assert sequence_items(header.get_item(0x52009230)) is None
    assert len(decoded) == int(reference.NumberOfFrames)


@pytest.mark.parametrize(
    "path",
    [
        TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP" / "IM_0027_fMAP.dcm",
        TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol" / "6_1.dcm",
    ],
    ids=["philips-fmap", "siemens-xa10"],
)
def test_functional_group_raw_items_match_datasets_and_decoded_path(path: Path) -> None:
    scanned = read_header(path.read_bytes(), str(path))
    assert scanned is not None
    header = scanned[0]
    raw_items = sequence_item_elements(header.get_item(0x52009230))
    items = sequence_items(header.get_item(0x52009230))
    assert raw_items is not None and items is not None
    assert len(raw_items) == len(items) == int(header.NumberOfFrames)
    for raw, item in zip(raw_items, items, strict=True):
        assert list(raw) == list(item.keys())
        assert all(raw[tag].value == item.get_item(tag).value for tag in raw)
    # frames described from the raw items equal those described once pydicom decoded the sequences
    fast = frames_of(0, SourceImage.from_dataset(header, header.file_meta.TransferSyntaxUID))
    decoded = read_header(path.read_bytes(), str(path))
    assert decoded is not None
    _ = decoded[0].PerFrameFunctionalGroupsSequence, decoded[0].SharedFunctionalGroupsSequence
    assert sequence_item_elements(decoded[0].get_item(0x52009230)) is None
    slow = frames_of(0, SourceImage.from_dataset(decoded[0], header.file_meta.TransferSyntaxUID))
    assert len(fast) == len(slow) == int(header.NumberOfFrames)
    for a, b in zip(fast, slow, strict=True):
        assert a.position is not None and b.position is not None
        assert (a.position == b.position).all() and a.pixel_spacing == b.pixel_spacing
        assert (a.slope, a.intercept, a.attrs) == (b.slope, b.intercept, b.attrs)
