"""A corpus of source header faults seen in real exports, made by mutating a real series of tests/data.

Each :class:`SourceFault` changes every instance of a copy of the series the way one faulty export does (the
value written as the file carries it: wrong length, characters, VR or character set), gives the copy its own
Series and SOP Instance UIDs, and says which corrections of the SEG's sanitiser it expects
(``keyword -> words of the rule``) or which attribute it must refuse. Used by the corpus test of the
pipeline (tests/dicom_node/test_source_faults.py) and the end-to-end test with Orthanc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

Mutation = Callable[[Dataset], None]


@dataclass(frozen=True)
class SourceFault:
    name: str
    #: Where such headers come from.
    seen: str
    mutate: Mutation
    #: keyword -> words that the correction of that attribute contains (``problem -> action``).
    expected: dict[str, str] = field(default_factory=dict)
    #: The Type 1 attribute whose fault refuses the job (no SEG), instead of corrections.
    refused: str | None = None


def raw(keyword: str, data: bytes, vr: str | None = None) -> Mutation:
    """Set an element to ``data`` exactly as a file would carry it (optionally with another VR)."""

    def mutate(ds: Dataset) -> None:
        tag = Tag(tag_for_keyword(keyword))
        ds._dict[tag] = RawDataElement(tag, vr or dictionary_VR(tag), len(data), data, 0, False, True)

    return mutate


def delete(*keywords: str) -> Mutation:
    def mutate(ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(ds: Dataset) -> None:
        for mutation in mutations:
            mutation(ds)

    return mutate


def _code_item_without_meaning(ds: Dataset) -> None:
    item = Dataset()
    item.CodeValue = "MRPELV"
    item.CodingSchemeDesignator = "99LOCAL"
    ds.ProcedureCodeSequence = [item]


def _referenced_study_with_bad_uid(ds: Dataset) -> None:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    item._dict[Tag(0x00081155)] = RawDataElement(Tag(0x00081155), "UI", 10, b"1.2.3.abc\x00", 0, False, True)
    ds.ReferencedStudySequence = [item]


def _private_creator_clash(ds: Dataset) -> None:
    """Two private creators with one name in a group, and a private element without a creator."""
    ds.add_new(0x00170010, "LO", "ACME 1.1")
    ds.add_new(0x00170011, "LO", "ACME 1.1")
    ds.add_new(0x00171001, "LO", "first block")
    ds.add_new(0x00171101, "LO", "second block")
    ds.add_new(0x00151001, "LO", "no creator for this block")


SPECIES_2C = {
    k: "required when the patient is an animal"
    for k in (
        "PatientSexNeutered",
        "PatientBreedDescription",
        "PatientBreedCodeSequence",
        "BreedRegistrationSequence",
        "ResponsibleOrganization",
    )
}

#: The corpus. Every copy also lacks Referring Physician's Name (the ProstateX anonymisation removed it):
#: that correction (added empty, Type 2) is expected of every job.
FAULTS: tuple[SourceFault, ...] = (
    SourceFault(
        "study_id_of_20_characters",
        "MIM-derived T1 crop with a Philips header",
        raw("StudyID", b"MIM-PHILIPS-12345678"),
        {"StudyID": "value length 20 exceeds 16 (SH) -> emptied (Type 2)"},
    ),
    SourceFault("empty_study_id", "anonymiser that blanks Study ID", raw("StudyID", b"")),
    SourceFault(
        "study_id_written_as_lo",
        "converter that writes Study ID with the VR LO",
        raw("StudyID", b"STUDY-42", vr="LO"),
        {"StudyID": "VR LO where the dictionary has SH -> read as SH"},
    ),
    SourceFault(
        "study_description_of_70_characters",
        "RIS procedure text copied into Study Description",
        raw("StudyDescription", b"MRI PELVIS PROSTATE MULTIPARAMETRIC WITH AND WITHOUT CONTRAST PI-RADS2"),
        {"StudyDescription": "value length 70 exceeds 64 (LO) -> dropped (Type 3)"},
    ),
    SourceFault(
        "study_description_as_un",
        "implicit VR file converted to explicit VR by a router",
        raw("StudyDescription", b"MR PROSTATE ", vr="UN"),
        {"StudyDescription": "VR UN where the dictionary has LO -> read as LO"},
    ),
    SourceFault(
        "tab_in_study_description",
        "RIS text with a tab",
        raw("StudyDescription", b"MR PROSTATE\tmpMRI"),
        {"StudyDescription": "control character in LO -> dropped (Type 3)"},
    ),
    SourceFault(
        "species_without_neutered_status",
        "MIM-derived T1 crop with a GE header (veterinary template)",
        raw("PatientSpeciesDescription", b"Homo sapiens"),
        {**SPECIES_2C, "ResponsiblePerson": "added empty (Type 2C)"},
    ),
    SourceFault(
        "responsible_person_without_role",
        "veterinary export with an owner but no role",
        both(
            raw("PatientSpeciesDescription", b"Canis lupus familiaris"), raw("ResponsiblePerson", b"Doe^Jane")
        ),
        {
            **SPECIES_2C,
            "ResponsiblePerson": "required when Responsible Person has a value -> emptied (Type 2C)",
        },
    ),
    SourceFault(
        "patient_name_of_70_characters",
        "patient name with all given names and titles",
        raw("PatientName", b"Mustermann-Schmidt-Meyer^Maximilian Alexander Friedrich Wilhelm^^Prof."),
        {"PatientName": "component group of 70 characters exceeds 64 (PN) -> emptied (Type 2)"},
    ),
    SourceFault(
        "latin_1_name_without_character_set",
        "Siemens export of a German name without Specific Character Set",
        both(delete("SpecificCharacterSet"), raw("PatientName", "Müller^Jürgen".encode("latin-1"))),
        {
            "PatientName": "non-ASCII text, no character set -> decoded as ISO 8859-1",
            "SpecificCharacterSet": "missing for non-ASCII text -> declared ISO_IR 100",
        },
    ),
    SourceFault(
        "utf_8_name_declared_latin_1",
        "web uploader that writes UTF-8 but keeps ISO_IR 100",
        raw("PatientName", "Wałęsa^Łukasz".encode()),
        {
            "PatientName": "text not in the declared character set -> decoded as UTF-8",
            "SpecificCharacterSet": "does not hold the copied text -> declared ISO_IR 192",
        },
    ),
    SourceFault(
        "character_set_misspelt",
        "PACS export writing ISO_IR_100",
        raw("SpecificCharacterSet", b"ISO_IR_100"),
        {"SpecificCharacterSet": "not spelt as the Defined Term -> respelt"},
    ),
    SourceFault(
        "character_set_iso_ir_6",
        "modality writing the default repertoire as ISO_IR 6",
        raw("SpecificCharacterSet", b"ISO_IR 6"),
        {"SpecificCharacterSet": "names the default repertoire -> removed"},
    ),
    SourceFault(
        "character_set_unknown",
        "Windows tool writing its code page",
        both(
            raw("SpecificCharacterSet", b"WINDOWS-1252"),
            raw("PatientName", "Gößling^Anaïs".encode("latin-1")),
        ),
        {
            "SpecificCharacterSet": "declared ISO_IR 100",
            "PatientName": "non-ASCII text, no character set -> decoded as ISO 8859-1",
        },
    ),
    SourceFault(
        "patient_id_with_two_values",
        "merged patient record exported with both IDs",
        raw("PatientID", b"ProstateX-0000\\PX-0000"),
        {"PatientID": "2 values where the dictionary allows VM 1 -> emptied (Type 2)"},
    ),
    SourceFault(
        "accession_number_of_17_characters",
        "RIS accession numbers with a site prefix",
        raw("AccessionNumber", b"SITE-A-2023011512"),
        {"AccessionNumber": "value length 17 exceeds 16 (SH) -> emptied (Type 2)"},
    ),
    SourceFault(
        "nul_in_accession_number",
        "C string terminator written into the value",
        raw("AccessionNumber", b"A123\x00"),
        {"AccessionNumber": "control character in SH -> emptied (Type 2)"},
    ),
    SourceFault(
        "patient_sex_lower_case",
        "registration software writing m",
        raw("PatientSex", b"m "),
        {"PatientSex": "not a valid CS value -> emptied (Type 2)"},
    ),
    SourceFault(
        "patient_sex_not_enumerated",
        "German registration writing W (weiblich)",
        raw("PatientSex", b"W "),
        {"PatientSex": "not one of the Enumerated Values of PS3.3 -> emptied (Type 2)"},
    ),
    SourceFault(
        "study_date_with_dots",
        "ACR-NEMA era archive migration",
        raw("StudyDate", b"2013.05.21"),
        {"StudyDate": "not a valid DA value -> emptied (Type 2)"},
    ),
    SourceFault(
        "birth_date_of_zeros",
        "anonymiser that zeroes the birth date",
        raw("PatientBirthDate", b"00000000"),
        {"PatientBirthDate": "not a valid DA value -> emptied (Type 2)"},
    ),
    SourceFault(
        "study_time_with_colons",
        "ACR-NEMA style time",
        raw("StudyTime", b"12:30:00"),
        {"StudyTime": "not a valid TM value -> emptied (Type 2)"},
    ),
    SourceFault(
        "patient_age_without_unit",
        "age written as a plain number",
        raw("PatientAge", b"66"),
        {"PatientAge": "not a valid AS value -> dropped (Type 3)"},
    ),
    SourceFault(
        "patient_weight_with_decimal_comma",
        "German locale number formatting",
        raw("PatientWeight", b"82,5"),
        {"PatientWeight": "not a valid DS value -> dropped (Type 3)"},
    ),
    SourceFault(
        "patient_size_with_unit",
        "height typed with its unit",
        raw("PatientSize", b"1.80m "),
        {"PatientSize": "not a valid DS value -> dropped (Type 3)"},
    ),
    SourceFault(
        "series_number_with_decimals",
        "DS-formatted Series Number",
        raw("SeriesNumber", b"9.0 "),
        {"SeriesNumber": "not a valid IS value -> dropped (Type 3)"},
    ),
    SourceFault(
        "type_2_attributes_missing",
        "minimal export that omits empty attributes",
        delete("StudyID", "AccessionNumber", "PatientBirthDate", "PatientSex", "StudyTime"),
        {
            k: "missing -> added empty (Type 2)"
            for k in ("StudyID", "AccessionNumber", "PatientBirthDate", "PatientSex", "StudyTime")
        },
    ),
    SourceFault(
        "patient_name_and_id_missing",
        "research export without patient identification",
        delete("PatientName", "PatientID"),
        {k: "missing -> added empty (Type 2)" for k in ("PatientName", "PatientID")},
    ),
    SourceFault(
        "referring_physician_with_six_components",
        "name with academic titles in extra components",
        raw("ReferringPhysicianName", b"Smith^John^A^Dr^MD^PhD"),
        {"ReferringPhysicianName": "person name with more than 5 components -> emptied (Type 2)"},
    ),
    SourceFault(
        "position_reference_of_70_characters",
        "free text landmark description",
        raw(
            "PositionReferenceIndicator",
            b"ILIAC CREST LANDMARK SET BY TECHNOLOGIST AT START OF THE EXAMINATION..",
        ),
        {"PositionReferenceIndicator": "value length 70 exceeds 64 (LO) -> emptied (Type 2)"},
    ),
    SourceFault(
        "lossy_compression_flag_1",
        "viewer export writing Lossy Image Compression as 1",
        raw("LossyImageCompression", b"1 "),
        {"LossyImageCompression": "not one of the Enumerated Values of PS3.3 -> dropped (Type 3)"},
    ),
    SourceFault(
        "clinical_trial_subject_without_sponsor",
        "trial export that fills only the site",
        both(raw("ClinicalTrialSiteID", b"07"), raw("ClinicalTrialSiteName", b"Nijmegen")),
        {"ClinicalTrialSubjectID": "module Clinical Trial Subject dropped"},
    ),
    SourceFault(
        "identity_removed_without_method",
        "anonymiser that sets Patient Identity Removed only",
        both(
            raw("PatientIdentityRemoved", b"YES "),
            delete("DeidentificationMethod", "DeidentificationMethodCodeSequence"),
        ),
        {"PatientIdentityRemoved": "required when Patient Identity Removed is YES -> dropped (Type 3)"},
    ),
    SourceFault(
        "procedure_code_without_meaning",
        "RIS code without Code Meaning",
        _code_item_without_meaning,
        {"ProcedureCodeSequence": "item 1 lacks CodeMeaning (Type 1) -> dropped (Type 3)"},
    ),
    SourceFault(
        "referenced_study_with_letters_in_uid",
        "RIS study reference with a local identifier",
        _referenced_study_with_bad_uid,
        {"ReferencedStudySequence": "ReferencedSOPInstanceUID in item 1: not a valid UI value -> dropped"},
    ),
    SourceFault(
        "institution_name_with_line_break",
        "two-line institution name",
        raw("InstitutionName", b"Radboud UMC\r\nRadiology"),
        {"InstitutionName": "control character in LO -> dropped (Type 3)"},
    ),
    SourceFault(
        "private_creator_clash",
        "two vendors' private blocks with one creator name, and a block without creator",
        _private_creator_clash,
    ),
    SourceFault(
        "frame_of_reference_uid_with_leading_zero",
        "old GE scanner UID root with leading zeros",
        raw("FrameOfReferenceUID", b"1.2.840.113619.2.05.1234\x00"),
        refused="FrameOfReferenceUID",
    ),
    SourceFault(
        "study_instance_uid_with_leading_zero",
        "old GE scanner UID root with leading zeros",
        raw("StudyInstanceUID", b"1.2.840.113619.2.05.98765"),
        refused="StudyInstanceUID",
    ),
)


def faulty_copy(files: list[Path], fault: SourceFault, folder: Path) -> list[Path]:
    """Copies of ``files`` with the fault, a Series Instance UID and SOP Instance UIDs of their own
    (derived from the fault's name, so a re-run gives the same ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[fault.name, str(ds.SeriesInstanceUID)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[fault.name, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        fault.mutate(ds)
        target = folder / path.name
        ds.save_as(target)
        out.append(target)
    return out
