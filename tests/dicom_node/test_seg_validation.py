"""The SEG's validation compares like with like: each dciodvfy error is attributed to the attribute it
names. A source's fault in an attribute the SEG copies (one the sanitiser does not know) is corrected by its
Type and the SEG validated again; an error in what SegNode wrote fails the job. Reasons carry no values."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicom_node.durable import write_dicom
from dicom_node.outputs.encode import validate_seg
from dicom_node.outputs.seg import AlgorithmInfo, EncodedSeg, encode_seg
from dicom_node.outputs.validation import (
    SegValidationError,
    redact,
    reported_attributes,
    validate_with_dciodvfy,
)
from tests.dicom_node.seg_support import TEST_SEGMENTS, synthetic_label_map, volumes_of
from tests.support.paths import PD_TRA

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.18.0")


def _dciodvfy(path: Path) -> int:
    return len(validate_with_dciodvfy(path).warnings)


@pytest.fixture
def encoded() -> EncodedSeg:
    [volume] = volumes_of(PD_TRA)
    return encode_seg(volume, synthetic_label_map(volume.shape, [1, 2]), TEST_SEGMENTS, ALGORITHM)


def _raw(encoded: EncodedSeg, keyword: str, vr: str, data: bytes) -> None:
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    encoded.dataset._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)


def test_a_copied_attributes_fault_reported_by_dciodvfy_is_corrected_by_its_type(
    tmp_path: Path, encoded: EncodedSeg
) -> None:
    """Faults put into the written SEG behind the sanitiser's back: a 2C requirement made by a copied
    attribute and an over-long Type 3 value. dciodvfy reports them; the SEG passes after the correction."""
    encoded.dataset.PatientSpeciesDescription = "Canis lupus"
    _raw(encoded, "StudyDescription", "LO", b"S" * 70)
    path = write_dicom(encoded.dataset, tmp_path / "seg.dcm")
    with pytest.raises(SegValidationError):
        validate_with_dciodvfy(path)
    _, corrections = validate_seg(encoded, path, "series 1", _dciodvfy)
    found = {c.keyword: f"{c.problem} -> {c.action}" for c in corrections}
    assert (
        found["StudyDescription"]
        == "Value invalid for this VR (reported by the validator) -> dropped (Type 3)"
    )
    assert found["PatientSexNeutered"].endswith("(reported by the validator) -> added empty (Type 2C)")
    validate_with_dciodvfy(path)  # the file was written again and passes
    assert "StudyDescription" not in pydicom.dcmread(path, stop_before_pixels=True)


def test_an_error_in_what_segnode_wrote_fails_and_is_not_corrected(
    tmp_path: Path, encoded: EncodedSeg
) -> None:
    del encoded.dataset.SegmentSequence[0].SegmentLabel  # Type 1 of SegNode's own segment description
    _raw(encoded, "ContentLabel", "CS", b"lower case")  # SegNode's own attribute
    path = write_dicom(encoded.dataset, tmp_path / "seg.dcm")
    with pytest.raises(SegValidationError, match="in the SEG, of what SegNode wrote itself") as failed:
        validate_seg(encoded, path, "series 1", _dciodvfy)
    assert failed.value.reason == "seg_invalid"
    assert "lower case" not in failed.value.message and not any(
        "lower case" in e for e in failed.value.errors
    )
    assert encoded.dataset.ContentLabel == "lower case"  # left as written: the job fails instead


def test_dciodvfy_lines_lose_the_values_they_quote_and_name_their_attribute() -> None:
    lines = [
        "Error - Value invalid for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = <Doe^John> - "
        "Length invalid for this VR = 70, expected <= 64",
        "Error - Unrecognized enumerated value <MALE> for value 1 of attribute <Patient's Sex>",
        "Error - Value invalid for this VR - (0x0008,0x0050) SH Accession Number  SH - Character invalid for "
        "this VR = 'a' (0x61)",
        "Error - Missing attribute Type 2C Conditional Element=<PatientSexNeutered> Module=<PatientStudy>",
        "Error - Dicom dataset contains invalid data values for Value Representations",
        "Error - SegmentNumber not monotonically increasing",
    ]
    redacted = [redact(line) for line in lines]
    assert not any(v in line for line in redacted for v in ("Doe^John", "MALE", "'a'", "0x61"))
    named, unnamed = reported_attributes(redacted)
    assert named == {
        "PatientName": "Value invalid for this VR",
        "PatientSex": "Unrecognized enumerated value",
        "AccessionNumber": "Value invalid for this VR",
        "PatientSexNeutered": "Missing attribute Type 2C Conditional",
    }
    assert unnamed == ["Error - SegmentNumber not monotonically increasing"]
