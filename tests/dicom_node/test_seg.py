"""DICOM-SEG encoding: every SEG passes dciodvfy and reads back voxel for voxel on the source grid."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import PYDICOM_ROOT_UID

from conversion.volume import Volume
from dicom_node.durable import write_dicom
from dicom_node.outputs.derived_attributes import private_copy
from dicom_node.outputs.seg import (
    AlgorithmInfo,
    Compression,
    EmptySegmentationError,
    EncodedSeg,
    SegEncodingError,
    SegmentationType,
    SegOptions,
    encode_seg,
    seg_options,
    seg_uids,
    segments_from_catalog,
)
from dicom_node.outputs.validation import SegValidationError, validate_with_dciodvfy
from tests.dicom_node.seg_support import TEST_SEGMENTS, synthetic_label_map, volumes_of

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.18.0", {"fast": "false"})
LABELS = [1, 2, 3, 5, 17]

SERIES = {
    "axial_oblique": "prostatex/ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276",
    "sagittal": "prostatex/ProstateX-0000_3.000000-t2tsesag-87368",
    "coronal_oblique": "prostatex/ProstateX-0000_5.000000-t2tsecor-03471",
    "multi_stack_dwi": "prostatex/ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284",
    "enhanced_one_volume_per_file": "dcm_qa_enh/Siemens_XA10_EnhancedMR_4vol",
    "enhanced_two_images_per_position": "dcm_qa_enh/Philips_EnhancedMR_fMAP",
}

#: dciodvfy warnings accepted on SegNode SEGs, each caused by a value copied unchanged from the source:
#: - person names with one component (Patient's Name "ProstateX-0000", Referring Physician's Name "Luci")
#:   are flagged as the retired PN form;
#: - a source without Study ID / Patient ID / Study Date/Time makes dciodvfy note the DICOMDIR keys missing;
#: - Requesting Service (0032,1033), which highdicom copies from Philips sources, makes it a Standard
#:   Extended SOP Class (two warnings).
ACCEPTED_WARNINGS = (
    re.compile(
        r"Warning - Value dubious for this VR - \(0x00(08|10),0x00[0-9a-f]{2}\) PN .* - "
        r"Retired Person Name form$"
    ),
    re.compile(r"Warning - Missing attribute or value that would be needed to build DICOMDIR - "),
    re.compile(
        r"Warning - Attribute is not present in standard DICOM IOD - \(0x0032,0x1033\) LO Requesting Service"
    ),
    re.compile(
        r"Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard "
    ),
)


def _read_back(path: Path, volume: Volume, encoded: EncodedSeg) -> npt.NDArray[np.uint8]:
    """The SEG's pixels on the volume grid, mapped back to model labels, read with highdicom."""
    seg = hd.seg.segread(path)
    refs = volume.slice_refs
    if refs[0].frame_number is None:
        frames = seg.get_pixels_by_source_instance(
            [r.sop_instance_uid for r in refs], combine_segments=True, assert_missing_frames_are_empty=True
        )
    else:
        frames = seg.get_pixels_by_source_frame(
            refs[0].sop_instance_uid,
            [int(r.frame_number or 0) for r in refs],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    lut = np.zeros(max(encoded.segment_labels) + 1, dtype=np.uint8)
    for number, label in encoded.segment_labels.items():
        lut[number] = label
    back: npt.NDArray[np.uint8] = lut[frames].transpose(2, 1, 0)
    return back


def _encode_write_validate(
    tmp_path: Path, volume: Volume, label_map: npt.NDArray[np.uint8], options: SegOptions
) -> tuple[EncodedSeg, Path]:
    encoded = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, options)
    path = write_dicom(encoded.dataset, tmp_path / f"{encoded.sop_instance_uid}.dcm")
    report = validate_with_dciodvfy(path)
    unexpected = [w for w in report.warnings if not any(p.match(w) for p in ACCEPTED_WARNINGS)]
    assert unexpected == []
    if options.segmentation_type is SegmentationType.BINARY:
        assert report.validator_gaps == []
    return encoded, path


@pytest.mark.parametrize("seg_type", list(SegmentationType))
@pytest.mark.parametrize("series", list(SERIES))
def test_seg_valid_and_voxel_exact(
    tmp_path: Path, test_mri: Path, series: str, seg_type: SegmentationType
) -> None:
    volumes = volumes_of(test_mri / SERIES[series])
    if series.startswith("multi_stack") or series.startswith("enhanced"):
        assert len(volumes) > 1
    for index, volume in enumerate(volumes[:2]):
        label_map = synthetic_label_map(volume.shape, LABELS, seed=index)
        encoded, path = _encode_write_validate(
            tmp_path, volume, label_map, SegOptions(segmentation_type=seg_type)
        )
        np.testing.assert_array_equal(_read_back(path, volume, encoded), label_map)
        ds = pydicom.dcmread(path)
        source = volume.first_header
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert str(ds[keyword].value) == str(source[keyword].value)
        assert ds.Modality == "SEG"
        assert ds.SegmentationType == str(seg_type)
        # Every frame references the source instance (and frame) of its volume slice.
        by_position = {
            tuple(round(float(v), 3) for v in item.PlanePositionSequence[0].ImagePositionPatient): item
            for item in ds.PerFrameFunctionalGroupsSequence
        }
        referenced = {
            (s.ReferencedSOPInstanceUID, int(s.get("ReferencedFrameNumber", 0) or 0))
            for item in by_position.values()
            for s in item.DerivationImageSequence[0].SourceImageSequence
        }
        expected = {(r.sop_instance_uid, r.frame_number or 0) for r in volume.slice_refs}
        assert referenced <= expected
        # Empty frames are omitted (first and last slices are empty in the synthetic map).
        assert int(ds.NumberOfFrames) < volume.shape[2] * (len(LABELS) if seg_type == "BINARY" else 1)


def test_segment_descriptions_from_catalog(tmp_path: Path, test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["axial_oblique"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    encoded, path = _encode_write_validate(tmp_path, volume, label_map, SegOptions())
    ds = pydicom.dcmread(path)
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == [1, 2, 3, 4, 5]
    assert dict(encoded.segment_labels) == {1: 1, 2: 2, 3: 3, 4: 5, 5: 17}
    left = ds.SegmentSequence[2]
    assert left.SegmentLabel == "kidney_left"
    assert left.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    kidney = left.SegmentedPropertyTypeCodeSequence[0]
    assert (kidney.CodeValue, kidney.CodingSchemeDesignator) == ("64033007", "SCT")
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert (
        "SegmentedPropertyTypeModifierCodeSequence"
        not in ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    )
    lab = hd.color.CIELabColor.from_dicom_value(left.RecommendedDisplayCIELabValue)
    assert lab.to_rgb() == pytest.approx((185, 102, 83), abs=1)
    algo = left.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "TotalSegmentator total_mr"
    assert algo.AlgorithmVersion == "2.18.0"
    assert left.SegmentAlgorithmType == "AUTOMATIC"
    assert ds.ContentLabel == "TOTAL_MR"


def test_series_description_and_number(tmp_path: Path, test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    default = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM).dataset
    assert default.SeriesNumber == int(volume.first_header.SeriesNumber) + 1000
    assert default.SeriesDescription == "TotalSegmentator total_mr SEG"
    options = SegOptions(series_description="AI {task} on {source}", series_number=777)
    ds = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, options).dataset
    assert ds.SeriesNumber == 777
    assert ds.SeriesDescription == f"AI total_mr on {volume.first_header.SeriesDescription}"
    with pytest.raises(SegEncodingError, match=r"series_description.*\{nope\}"):
        encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, SegOptions(series_description="{nope}"))


def test_uids_are_deterministic(test_mri: Path) -> None:
    volumes = volumes_of(test_mri / SERIES["multi_stack_dwi"])
    volume = volumes[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    first = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM)
    again = encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM)
    assert (first.series_instance_uid, first.sop_instance_uid) == (
        again.series_instance_uid,
        again.sop_instance_uid,
    )
    assert first.series_instance_uid != first.sop_instance_uid
    # Every UID in the object is derived, the Dimension Organization UID too (highdicom draws it at random).
    dimension_uids = {
        str(item.DimensionOrganizationUID)
        for encoded in (first, again)
        for item in [*encoded.dataset.DimensionOrganizationSequence, *encoded.dataset.DimensionIndexSequence]
    }
    assert len(dimension_uids) == 1
    assert dimension_uids.pop().startswith(PYDICOM_ROOT_UID)
    options = SegOptions()
    base = seg_uids(volume, ALGORITHM, options)
    assert seg_uids(volumes[1], ALGORITHM, options) != base  # other stack
    assert seg_uids(volume, dataclasses.replace(ALGORITHM, version="2.19.0"), options) != base
    assert seg_uids(volume, dataclasses.replace(ALGORITHM, task="body_mr"), options) != base
    assert seg_uids(volume, ALGORITHM, SegOptions(segmentation_type=SegmentationType.LABELMAP)) != base
    assert seg_uids(volume, ALGORITHM, SegOptions(config_fingerprint="x")) != base
    rooted = seg_uids(volume, ALGORITHM, SegOptions(uid_root="1.2.3.4"))
    assert all(uid.startswith("1.2.3.4.") and len(uid) <= 64 for uid in rooted)


@pytest.mark.parametrize(
    ("seg_type", "compression", "ts"),
    [
        (SegmentationType.BINARY, Compression.JPEG2000, "1.2.840.10008.1.2.4.90"),
        (SegmentationType.LABELMAP, Compression.RLE, "1.2.840.10008.1.2.5"),
        (SegmentationType.LABELMAP, Compression.JPEG2000, "1.2.840.10008.1.2.4.90"),
    ],
)
def test_compression(
    tmp_path: Path, test_mri: Path, seg_type: SegmentationType, compression: Compression, ts: str
) -> None:
    volume = volumes_of(test_mri / SERIES["coronal_oblique"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    encoded, path = _encode_write_validate(
        tmp_path, volume, label_map, SegOptions(segmentation_type=seg_type, compression=compression)
    )
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ts
    np.testing.assert_array_equal(_read_back(path, volume, encoded), label_map)


def test_rle_binary_is_refused(test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["coronal_oblique"])[0]
    label_map = synthetic_label_map(volume.shape, LABELS)
    options = SegOptions(compression=Compression.RLE)
    with pytest.raises(SegEncodingError, match="RLE compression is only possible for LABELMAP"):
        encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM, options)


def test_bad_inputs_have_clear_errors(test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    series = volume.series_instance_uid
    with pytest.raises(EmptySegmentationError, match=f"series {series}.*empty") as empty:
        encode_seg(volume, np.zeros(volume.shape, np.uint8), TEST_SEGMENTS, ALGORITHM)
    assert empty.value.reason == "empty_segmentation"
    with pytest.raises(SegEncodingError, match="label map shape"):
        encode_seg(volume, np.zeros((2, 2, 2), np.uint8), TEST_SEGMENTS, ALGORITHM)
    with pytest.raises(SegEncodingError, match="must hold integers"):
        encode_seg(volume, np.zeros(volume.shape, np.float32), TEST_SEGMENTS, ALGORITHM)
    label_map = synthetic_label_map(volume.shape, [1, 42])
    with pytest.raises(
        SegEncodingError, match=r"labels \[42\] of task 'total_mr' have no segment description"
    ):
        encode_seg(volume, label_map, TEST_SEGMENTS, ALGORITHM)
    reversed_volume = dataclasses.replace(volume, slice_refs=tuple(reversed(volume.slice_refs)))
    with pytest.raises(SegEncodingError, match="do not follow the Volume affine"):
        encode_seg(reversed_volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM)


def test_inconsistent_frame_of_reference_is_refused(test_mri: Path) -> None:
    """A real series whose instances each carry their own Frame of Reference UID cannot give one SEG."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the UIDs of this series have leading-zero components
        volume = volumes_of(test_mri / "sunnybrook_cardiac/SCD0000101_CINESAX_phase1")[0]
        with pytest.raises(SegEncodingError, match="Frame of Reference UIDs") as err:
            encode_seg(volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM)
    assert err.value.reason == "inconsistent_frame_of_reference"


def test_dciodvfy_errors_fail(tmp_path: Path, test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    encoded = encode_seg(volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM)
    del encoded.dataset.SegmentSequence[0].SegmentLabel  # type 1 attribute
    path = write_dicom(encoded.dataset, tmp_path / "broken.dcm")
    with pytest.raises(SegValidationError, match="broken.dcm: dciodvfy reported") as err:
        validate_with_dciodvfy(path)
    assert any("SegmentLabel" in e for e in err.value.errors), err.value.errors
    assert err.value.reason == "seg_invalid"


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.JPEG2000])
def test_dciodvfy_on_a_witness(tmp_path: Path, test_mri: Path, compression: Compression) -> None:
    """max_frames: dciodvfy checks a copy with some of the frames; errors outside the frames still fail."""
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    options = SegOptions(compression=compression)
    encoded = encode_seg(volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM, options)
    path = write_dicom(encoded.dataset, tmp_path / "seg.dcm")
    report = validate_with_dciodvfy(path, max_frames=8)
    assert report.witness_frames is not None
    assert 8 <= report.witness_frames < encoded.number_of_frames
    assert [w for w in report.warnings if not any(p.match(w) for p in ACCEPTED_WARNINGS)] == []
    assert validate_with_dciodvfy(path, max_frames=encoded.number_of_frames).witness_frames is None

    del encoded.dataset.SegmentSequence[0].SegmentLabel  # type 1 attribute
    broken = write_dicom(encoded.dataset, tmp_path / "broken.dcm")
    with pytest.raises(SegValidationError, match=r"broken.dcm \(witness of \d+ of its frames\)") as err:
        validate_with_dciodvfy(broken, max_frames=8)
    assert any("SegmentLabel" in e for e in err.value.errors), err.value.errors


def test_dciodvfy_timeout_is_an_error(tmp_path: Path, test_mri: Path) -> None:
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    encoded = encode_seg(volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM)
    path = write_dicom(encoded.dataset, tmp_path / "seg.dcm")
    slow = tmp_path / "slow-dciodvfy"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(SegEncodingError, match="seg.dcm: dciodvfy did not finish within 0.5 s") as err:
        validate_with_dciodvfy(path, executable=str(slow), timeout_s=0.5)
    assert err.value.reason == "validator_timeout"


def test_enhanced_source_frames_are_referenced(tmp_path: Path, test_mri: Path) -> None:
    """Philips fMAP: two frames per position; each SEG frame references only its stack's source frame."""
    volumes = volumes_of(test_mri / SERIES["enhanced_two_images_per_position"])
    for volume in volumes:
        encoded = encode_seg(volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM)
        wanted = {r.frame_number for r in volume.slice_refs}
        for item in encoded.dataset.PerFrameFunctionalGroupsSequence:
            sources = item.DerivationImageSequence[0].SourceImageSequence
            assert len(sources) == 1
            assert int(sources[0].ReferencedFrameNumber) in wanted


def test_segments_from_the_structure_catalog(tmp_path: Path, test_mri: Path) -> None:
    """The real total_mr catalog: all 50 labels in one SEG, each described as the catalog says."""
    from inference.catalog import get_catalog

    segments = segments_from_catalog("total_mr")
    catalog = get_catalog("total_mr")
    assert sorted(segments) == sorted(catalog)
    volume = volumes_of(test_mri / SERIES["axial_oblique"])[0]
    label_map = np.zeros(volume.shape, np.uint8)
    for n, label in enumerate(sorted(segments)):  # one small block per label
        i, j = divmod(n, 8)
        label_map[8 + 12 * i : 16 + 12 * i, 8 + 12 * j : 16 + 12 * j, 2 + n % 10 : 5 + n % 10] = label
    encoded = encode_seg(volume, label_map, segments, ALGORITHM, SegOptions())
    path = write_dicom(encoded.dataset, tmp_path / "catalog.dcm")
    assert not [
        w for w in validate_with_dciodvfy(path).warnings if not any(p.match(w) for p in ACCEPTED_WARNINGS)
    ]
    ds = pydicom.dcmread(path)
    assert len(ds.SegmentSequence) == 50
    for item in ds.SegmentSequence:
        structure = catalog[encoded.segment_labels[int(item.SegmentNumber)]]
        assert item.SegmentLabel == structure.display_name
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == structure.type.value
        modifier = item.SegmentedPropertyTypeCodeSequence[0].get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier[0].CodeValue if modifier else None) == (
            structure.type_modifier.value if structure.type_modifier else None
        )
    np.testing.assert_array_equal(_read_back(path, volume, encoded), label_map)


def test_options_from_configuration(test_mri: Path) -> None:
    from config.routing import SegConfig

    config = SegConfig(
        series_description="SEG {task}", series_number=501, compression="jpeg2000", uid_root="1.2.3"
    )
    options = seg_options(config, SegmentationType.BINARY, software_version="9.9")
    assert (options.compression, options.series_number, options.uid_root) == (
        Compression.JPEG2000,
        501,
        "1.2.3",
    )
    assert options.software_version == "9.9" and options.device_serial_number
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    same = seg_uids(volume, ALGORITHM, seg_options(config, SegmentationType.BINARY, "9.9"))
    assert seg_uids(volume, ALGORITHM, options) == same
    other = config.model_copy(update={"series_description": "other {task}"})
    assert seg_uids(volume, ALGORITHM, seg_options(other, SegmentationType.BINARY, "9.9")) != same
    ds = encode_seg(
        volume, synthetic_label_map(volume.shape, LABELS), TEST_SEGMENTS, ALGORITHM, options
    ).dataset
    assert (ds.SeriesNumber, ds.SeriesDescription, ds.SoftwareVersions) == (501, "SEG total_mr", "9.9")
    assert ds.SeriesInstanceUID.startswith("1.2.3.")


def test_invalid_source_dates_are_left_empty(tmp_path: Path, test_mri: Path) -> None:
    """Anonymised sources with dates such as 00000000 (read tolerantly) still give a conformant SEG; the
    corrections name the attributes and the rule, not the values."""
    volume = volumes_of(test_mri / SERIES["sagittal"])[0]
    headers = []
    for header in volume.source_headers:
        copy = private_copy(header)
        copy.PatientBirthDate = "00000000"
        copy.StudyDate = "20120000"
        headers.append(copy)
    broken = dataclasses.replace(volume, source_headers=tuple(headers))
    encoded, path = _encode_write_validate(
        tmp_path, broken, synthetic_label_map(volume.shape, LABELS), SegOptions()
    )
    ds = pydicom.dcmread(path)
    assert ds.PatientBirthDate == "" and ds.StudyDate == ""
    found = {c.keyword: f"{c.problem} -> {c.action}" for c in encoded.corrections}
    assert found["PatientBirthDate"] == "not a valid DA value -> emptied (Type 2)"
    assert found["StudyDate"] == "not a valid DA value -> emptied (Type 2)"
    assert not any("0000" in str(c) for c in encoded.corrections)
    # the source headers are left as they were
    assert broken.first_header.PatientBirthDate == "00000000"
