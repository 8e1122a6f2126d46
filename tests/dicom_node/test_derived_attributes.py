"""The sanitiser of attributes copied from a source into a derived object (dicom_node/outputs/
derived_attributes.py): each rule on a real MR header with one fault set as the bytes a file would carry."""

from __future__ import annotations

from collections.abc import Callable

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.outputs.attribute_values import value_problem, vm_allows
from dicom_node.outputs.derived_attributes import (
    CopiedAttributes,
    SourceAttributeError,
    correct_derived,
    describe,
    root_attributes,
    sanitize_source,
)
from tests.support.paths import PD_TRA

SOURCE = PD_TRA / "1-01.dcm"
#: A SEG-like choice of copied modules and single attributes (the SEG's own list is in the SEG encoder).
COPIED = CopiedAttributes.of_iod(
    "segmentation",
    ("Patient", "Study"),
    modules=("specimen",),
    attributes=(
        ("FrameOfReferenceUID", "1"),
        ("PositionReferenceIndicator", "2"),
        ("SeriesNumber", "3"),
        ("StudyInstanceUID", "1"),
    ),
)


def source() -> Dataset:
    return pydicom.dcmread(SOURCE, stop_before_pixels=True)


def raw(header: Dataset, keyword: str, data: bytes) -> Dataset:
    """Set an element as a file would carry it (explicit VR little endian bytes, not yet decoded)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None
    header._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(data), data, 0, False, True)
    return header


def corrections_of(header: Dataset) -> dict[str, str]:
    return {
        c.keyword: f"{c.problem} -> {c.action}"
        for c in sanitize_source(header, COPIED, "series 1").corrections
    }


def test_a_clean_header_keeps_its_values_and_the_source_is_not_changed() -> None:
    header = source()
    before = {tag: header.get_item(tag) for tag in header.keys()}
    result = sanitize_source(header, COPIED, "series 1")
    # ProstateX's anonymised headers lack Referring Physician's Name (Type 2 of General Study)
    assert [str(c) for c in result.corrections] == ["ReferringPhysicianName: missing -> added empty (Type 2)"]
    assert {tag: header.get_item(tag) for tag in header.keys()} == before
    assert "ReferringPhysicianName" not in header
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "PatientSex"):
        assert result.header[keyword].value == source()[keyword].value
    assert result.header.SpecificCharacterSet == "ISO_IR 100"


Fault = Callable[[Dataset], Dataset]
#: fault -> (injected value, keyword, expected rule)
FAULTS: dict[str, tuple[bytes, str, str]] = {
    "study id of 20 characters": (
        b"STUDY-0123456789-XY",
        "StudyID",
        "value length 19 exceeds 16 (SH) -> emptied",
    ),
    "study description of 70": (b"D" * 70, "StudyDescription", "value length 70 exceeds 64 (LO) -> dropped"),
    "patient id with two values": (
        b"PID1\\PID2",
        "PatientID",
        "2 values where the dictionary allows VM 1 -> emptied",
    ),
    "patient sex not enumerated": (
        b"W ",
        "PatientSex",
        "not one of the Enumerated Values of PS3.3 -> emptied",
    ),
    "lower case CS": (b"altered ", "PatientSexNeutered", "not a valid CS value -> emptied (Type 2C)"),
    "study time with colons": (b"12:30:00", "StudyTime", "not a valid TM value -> emptied (Type 2)"),
    "31 February": (b"20230231", "StudyDate", "not a date that exists (DA) -> emptied (Type 2)"),
    "anonymised birth date": (b"00000000", "PatientBirthDate", "not a valid DA value -> emptied (Type 2)"),
    "decimal comma": (b"70,5", "PatientWeight", "not a valid DS value -> dropped (Type 3)"),
    "series number 3.0": (b"3.0 ", "SeriesNumber", "not a valid IS value -> dropped (Type 3)"),
    "age without unit": (b"45", "PatientAge", "not a valid AS value -> dropped (Type 3)"),
    "tab in LO": (b"KNEE\tLEFT", "StudyDescription", "control character in LO -> dropped (Type 3)"),
    "NUL in SH": (b"A\x00B ", "AccessionNumber", "control character in SH -> emptied (Type 2)"),
    "six name components": (b"A^B^C^D^E^F ", "ReferringPhysicianName", "more than 5 components -> emptied"),
    "name of 70": (b"N" * 70, "PatientName", "group of 70 characters exceeds 64 (PN) -> emptied (Type 2)"),
    "position reference of 70": (b"P" * 70, "PositionReferenceIndicator", "exceeds 64 (LO) -> emptied"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_invalid_value_is_emptied_or_dropped_by_its_type_and_noted_without_the_value(fault: str) -> None:
    data, keyword, rule = FAULTS[fault]
    header = raw(source(), keyword, data)
    result = sanitize_source(header, COPIED, "series 1")
    found = {c.keyword: str(c) for c in result.corrections}
    assert rule in found[keyword], found
    assert data.decode("latin-1").strip() not in " ".join(found.values())  # never the value
    if "emptied" in rule:
        assert result.header[keyword].value in ("", None)
    else:
        assert keyword not in result.header
    # the result is clean: sanitising it again changes nothing
    assert sanitize_source(result.header, COPIED, "series 1").corrections == ()


def test_a_missing_type_2_attribute_is_added_empty() -> None:
    header = source()
    del header.StudyID
    del header.PatientBirthDate
    found = corrections_of(header)
    assert found["StudyID"] == "missing -> added empty (Type 2)"
    assert found["PatientBirthDate"] == "missing -> added empty (Type 2)"


def test_a_species_without_neutered_status_gets_the_type_2c_attributes_of_an_animal() -> None:
    header = raw(source(), "PatientSpeciesDescription", b"Canis lupus familiaris")
    result = sanitize_source(header, COPIED, "series 1")
    added = {c.keyword for c in result.corrections if c.action == "added empty (Type 2C)"}
    assert added == {
        "PatientSexNeutered",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "BreedRegistrationSequence",
        "ResponsiblePerson",
        "ResponsibleOrganization",
    }
    assert result.header.PatientSpeciesDescription == "Canis lupus familiaris"
    assert result.header.PatientSexNeutered == "" and result.header.PatientBreedCodeSequence == Sequence()


def test_a_responsible_person_without_role_is_emptied() -> None:
    header = raw(raw(source(), "PatientSpeciesDescription", b"dog "), "ResponsiblePerson", b"Smith^John ")
    found = corrections_of(header)
    assert found["ResponsiblePerson"].endswith(
        "required when Responsible Person has a value -> emptied (Type 2C)"
    )


def test_a_clinical_trial_subject_module_without_type_1_attributes_is_dropped_whole() -> None:
    header = raw(raw(source(), "ClinicalTrialSiteID", b"12"), "ClinicalTrialSiteName", b"Site ")
    result = sanitize_source(header, COPIED, "series 1")
    [dropped] = [c for c in result.corrections if "module" in c.action]
    assert dropped.action == "module Clinical Trial Subject dropped (Type 1 in an optional module)"
    assert "ClinicalTrialSiteID" not in result.header and "ClinicalTrialSiteName" not in result.header


def test_an_invalid_item_makes_its_sequence_invalid() -> None:
    header = source()
    item = Dataset()
    item.CodeValue = "XYZ"
    item.CodingSchemeDesignator = "99LOCAL"
    header.ProcedureCodeSequence = [item]  # Code Meaning (Type 1) missing
    found = corrections_of(header)
    assert found["ProcedureCodeSequence"] == "item 1 lacks CodeMeaning (Type 1) -> dropped (Type 3)"


def test_latin_1_names_without_a_character_set_are_declared_iso_ir_100() -> None:
    header = raw(source(), "PatientName", "Müller^Jürgen".encode("latin-1"))
    del header.SpecificCharacterSet
    result = sanitize_source(header, COPIED, "series 1")
    found = {c.keyword: f"{c.problem} -> {c.action}" for c in result.corrections}
    assert found["PatientName"] == "non-ASCII text, no character set -> decoded as ISO 8859-1"
    assert found["SpecificCharacterSet"] == "missing for non-ASCII text -> declared ISO_IR 100"
    assert result.header.SpecificCharacterSet == "ISO_IR 100"
    assert str(result.header.PatientName) == "Müller^Jürgen"


def test_utf_8_names_under_a_latin_1_declaration_are_declared_iso_ir_192() -> None:
    header = raw(source(), "PatientName", "Łukasz^Żółć".encode())
    result = sanitize_source(header, COPIED, "series 1")
    assert result.header.SpecificCharacterSet == "ISO_IR 192"
    assert str(result.header.PatientName) == "Łukasz^Żółć"
    found = {c.keyword: str(c) for c in result.corrections}
    assert (
        "decoded as UTF-8" in found["PatientName"] and "declared ISO_IR 192" in found["SpecificCharacterSet"]
    )


@pytest.mark.parametrize(
    ("declared", "expected", "rule"),
    [
        (b"ISO_IR_100", "ISO_IR 100", "not spelt as the Defined Term -> respelt"),
        (b"ISO-8859-1", "ISO_IR 100", "not spelt as the Defined Term -> respelt"),
        (b"UTF-8 ", "ISO_IR 192", "not spelt as the Defined Term -> respelt"),
        (b"ISO_IR 6", None, "names the default repertoire -> removed (default by absence)"),
    ],
)
def test_character_set_spellings_seen_in_exports(declared: bytes, expected: str | None, rule: str) -> None:
    header = raw(source(), "SpecificCharacterSet", declared)
    result = sanitize_source(header, COPIED, "series 1")
    assert result.header.get("SpecificCharacterSet") == expected
    assert {c.keyword: f"{c.problem} -> {c.action}" for c in result.corrections}[
        "SpecificCharacterSet"
    ] == rule


def test_an_invalid_type_1_uid_refuses_the_source_naming_the_attribute() -> None:
    header = raw(source(), "FrameOfReferenceUID", b"1.2.840.0123.4")
    with pytest.raises(SourceAttributeError) as refused:
        sanitize_source(header, COPIED, "series 1.2.3")
    assert refused.value.keyword == "FrameOfReferenceUID"
    assert refused.value.reason == "source_attribute_invalid"
    message = refused.value.message
    assert message.startswith("series 1.2.3: the source's Frame of Reference UID (0020,0052) not a valid UI")
    assert "send the series again" in message and "0123" not in message
    del header.FrameOfReferenceUID
    with pytest.raises(SourceAttributeError, match=r"Frame of Reference UID \(0020,0052\) missing or empty"):
        sanitize_source(header, COPIED, "series 1.2.3")


def test_the_copied_modules_come_from_the_standards_tables_for_any_derived_iod() -> None:
    rtstruct = CopiedAttributes.of_iod("rt-structure-set", ("Patient", "Study"))
    assert {m.key for m in rtstruct.modules} >= {"patient", "general-study", "patient-study"}
    assert [m.mandatory for m in rtstruct.modules if m.key in ("patient", "general-study")] == [True, True]
    assert ("StudyID", "2") in root_attributes("general-study")
    assert describe("StudyID") == "Study ID (0020,0010)"


def test_value_checks_and_value_multiplicity() -> None:
    assert [vm_allows(vm, n) for vm, n in [("1", 2), ("1-n", 3), ("2-2n", 3), ("2-2n", 4), ("1-3", 4)]] == [
        False,
        True,
        False,
        True,
        False,
    ]
    header = source()
    assert value_problem(header, tag_for_keyword("StudyInstanceUID")) is None
    raw(header, "StudyID", b"\xe4bc")
    assert value_problem(header, tag_for_keyword("StudyID")) is None  # text VR: the charset pass judges bytes
    raw(header, "PatientSex", b"\xe4")
    assert (
        value_problem(header, tag_for_keyword("PatientSex"))
        == "characters outside the default repertoire of CS"
    )


@pytest.mark.parametrize(
    ("vr", "keyword", "data"), [("LO", "StudyID", b"STUDY-42"), ("UN", "StudyDescription", b"MR ")]
)
def test_a_value_stored_with_another_vr_is_read_with_the_dictionarys(
    vr: str, keyword: str, data: bytes
) -> None:
    header = source()
    tag = tag_for_keyword(keyword)
    assert tag is not None
    header._dict[tag] = RawDataElement(tag, vr, len(data), data, 0, False, True)
    result = sanitize_source(header, COPIED, "series 1")
    expected = str(dictionary_VR(tag))
    found = {c.keyword: f"{c.problem} -> {c.action}" for c in result.corrections}
    assert found[keyword] == f"VR {vr} where the dictionary has {expected} -> read as {expected}"
    assert (result.header[keyword].VR, result.header[keyword].value) == (expected, data.decode().strip())


def test_attributes_a_validator_reports_in_the_derived_object_are_corrected_by_their_type() -> None:
    """What the checks here do not know but the validator of the written object reports, on attributes the
    object copied, gets the same rules; its own attributes are handed back untouched."""
    derived = source()
    derived.ContentLabel = "LIVER"
    reported = {
        "PatientSexNeutered": "Missing attribute Type 2C Conditional",
        "StudyDescription": "Value invalid for this VR",
        "PatientName": "Value invalid for this VR",
        "ContentLabel": "Value invalid for this VR",
    }
    corrections, own = correct_derived(derived, reported, COPIED, "series 1")
    assert own == ["ContentLabel"] and derived.ContentLabel == "LIVER"
    assert [str(c) for c in corrections] == [
        "PatientSexNeutered: Missing attribute Type 2C Conditional (reported by the validator) -> "
        "added empty (Type 2C)",
        "StudyDescription: Value invalid for this VR (reported by the validator) -> dropped (Type 3)",
        "PatientName: Value invalid for this VR (reported by the validator) -> emptied (Type 2)",
    ]
    assert (
        derived.PatientSexNeutered == "" and "StudyDescription" not in derived and derived.PatientName == ""
    )
    with pytest.raises(SourceAttributeError, match=r"Study Instance UID \(0020,000D\)"):
        correct_derived(derived, {"StudyInstanceUID": "Value invalid for this VR"}, COPIED, "series 1")
