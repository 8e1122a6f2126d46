"""The header the SCP files an instance by, read from where the structure check found it, is what pydicom
reads: every real instance of tests/data/mri in every transfer syntax it comes in, and text in a character
set other than ASCII."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.receiving.admission import check_encoding
from dicom_node.receiving.header import _header_from_dataset, read_header
from tests.support.paths import CINE, T2_SAG, TEST_MRI, series_files


def encoded(path: Path) -> tuple[bytes, str]:
    """A Part 10 file as pynetdicom's ``event.encoded_dataset()`` gives it (File Meta Information included),
    and its transfer syntax."""
    return path.read_bytes(), str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


@pytest.mark.parametrize("path", sorted(TEST_MRI.rglob("*.dcm")), ids=lambda p: p.parent.name + "/" + p.name)
def test_the_scanned_header_is_pydicoms(path: Path) -> None:
    data, syntax = encoded(path)
    raw = check_encoding(data, syntax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _header_from_dataset(data, syntax)
    assert read_header(data, syntax, raw) == expected


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_latin_1_and_utf_8_names_are_decoded_in_their_character_set(tmp_path: Path, syntax: str) -> None:
    for charset, name in (("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "Ødegård^Åse^Ł")):
        ds = pydicom.dcmread(series_files(T2_SAG)[0])
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.ImagesInAcquisition = "19.0"  # an IS written as a whole number with a decimal point
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / "named.dcm"
        ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
        data, _ = encoded(path)
        header = read_header(data, syntax, check_encoding(data, syntax))
        assert (header.patient_name, header.images_in_acquisition) == (name, 19)
        assert header == _header_from_dataset(data, syntax)


def test_uids_with_leading_zeros_are_read_without_a_warning_per_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GE's UIDs with leading-zero components (accepted by the node) make pydicom warn (and log a WARNING)
    on every such value it reads; the scan reads them without pydicom's validation."""
    data, syntax = encoded(series_files(CINE)[0])
    caplog.set_level(logging.DEBUG)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        expected = _header_from_dataset(data, syntax)
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = read_header(data, syntax, check_encoding(data, syntax))
    assert header == expected
    assert ".99.0" in header.study_instance_uid
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
