"""The TID 1500 volumetry SR and the volumes behind it (dicom_node.outputs.volumetry, dicom_node.outputs.sr):
valid for dciodvfy, read back by highdicom, volumes equal to voxel count x voxel volume (computed here from
the source headers, not from the Volume affine), border and plausibility flags on crafted label maps, and the
SR stored in a real Orthanc next to its SEG and sources."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from config.routing import DestinationConfig, SendingConfig
from conversion.volume import Volume
from dicom_node.outputs import volumetry
from dicom_node.outputs.derived import DerivedContext, DerivedEncodingError, set_equipment
from dicom_node.outputs.seg import (
    AlgorithmInfo,
    EncodedSeg,
    SegOptions,
    encode_seg,
    segments_from_catalog,
)
from dicom_node.outputs.sender import send_datasets
from dicom_node.outputs.sr import (
    BORDER_CODE,
    IMPLAUSIBLE_CODE,
    _all_parts,
    _content_as_written,
    _group,
    _Layout,
    _other_groups,
    document_arguments,
    encode_volumetry_sr,
    measurement_groups,
    measurement_report,
)
from dicom_node.outputs.validation import validate_with_dciodvfy
from tests.dicom_node.seg_support import volumes_of
from tests.support.orthanc import Orthanc
from tests.support.paths import PD_TRA, series_files
from tests.support.series import header_voxel_ml

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.0")
SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, LIVER, ADRENAL_RIGHT, PROSTATE = 1, 2, 3, 5, 8, 17
SEGMENTS = segments_from_catalog("total_mr")


@pytest.fixture(scope="module")
def volume() -> Volume:
    return volumes_of(PD_TRA)[0]


def crafted(volume: Volume) -> npt.NDArray[np.uint8]:
    """Spleen 30 ml (implausible) inside; liver 150 ml inside; right kidney 60 ml touching the first column
    (a lower bound, plausible); left kidney 25 ml touching the last slice (both flags); right adrenal 2 ml;
    prostate (no cut-off) touching the first row."""
    out = np.zeros(volume.shape, dtype=np.uint8)
    assert len(series_files(PD_TRA)) == volume.shape[2]
    voxel_ml = header_voxel_ml(series_files(PD_TRA))

    def fill(label: int, ml: float, box: tuple[slice, slice, slice]) -> None:
        """The first round(ml / voxel volume) voxels of ``box`` (C order)."""
        n = int(round(ml / voxel_ml))
        region = out[box]
        assert region.size >= n and not region.any(), f"label {label}: box too small or taken"
        flat = region.reshape(-1).copy()
        flat[:n] = label
        out[box] = flat.reshape(region.shape)

    ni, nj, nk = volume.shape
    fill(SPLEEN, 30.0, np.s_[30:60, 20:60, 2:8])
    fill(LIVER, 150.0, np.s_[60:110, 20:70, 2:12])
    fill(KIDNEY_RIGHT, 60.0, np.s_[0:30, 80:125, 2:12])
    fill(KIDNEY_LEFT, 25.0, np.s_[30:60, 80:125, nk - 3 : nk])
    fill(ADRENAL_RIGHT, 2.0, np.s_[112:120, 60:80, 5:8])
    out[20:30, 0:4, 4:6] = PROSTATE
    return out


def encode(volume: Volume, label_map: npt.NDArray[np.uint8], **options: Any) -> tuple[EncodedSeg, Dataset]:
    seg_options = SegOptions(**options)
    seg = encode_seg(volume, label_map, SEGMENTS, ALGORITHM, seg_options)
    context = DerivedContext(volume, ALGORITHM, seg_options)
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    return seg, encode_volumetry_sr(context, report, seg, SEGMENTS).dataset


@pytest.fixture(scope="module")
def encoded(volume: Volume) -> tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]:
    label_map = crafted(volume)
    seg, sr = encode(volume, label_map)
    return label_map, seg, sr


def groups_by_name(sr: Dataset) -> dict[str, Any]:
    document = hd.sr.Comprehensive3DSR.from_dataset(sr)
    groups = document.content.get_volumetric_roi_measurement_groups()
    return {g.tracking_identifier: g for g in groups}


def evaluation(group: Any, code: Any) -> str:
    found = [e for e in group.get_qualitative_evaluations() if e.name.value == code.value]
    assert len(found) <= 1
    return "" if not found else str(found[0].value.meaning)


def test_sr_is_valid(tmp_path: Path, encoded: tuple[Any, EncodedSeg, Dataset]) -> None:
    path = tmp_path / "sr.dcm"
    encoded[2].save_as(path, enforce_file_format=True)
    report = validate_with_dciodvfy(path)  # raises on any Error line
    assert report.witness_frames is None
    assert encoded[2].SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert pydicom.dcmread(path).ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_volumes_are_voxel_count_times_voxel_volume(
    volume: Volume, encoded: tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]
) -> None:
    label_map, seg, sr = encoded
    groups = groups_by_name(sr)
    assert len(series_files(PD_TRA)) == volume.shape[2]
    voxel_ml = header_voxel_ml(series_files(PD_TRA))
    assert set(groups) == {SEGMENTS[label].name for label in np.unique(label_map) if label}
    numbers = {label: number for number, label in seg.segment_labels.items()}
    for label in (int(v) for v in np.unique(label_map) if v):
        spec = SEGMENTS[label]
        group = groups[spec.name]
        (measurement,) = group.get_measurements()
        assert measurement.name.value == "118565006" and measurement.unit.value == "ml"
        expected = int((label_map == label).sum()) * voxel_ml
        assert measurement.value == pytest.approx(expected, rel=1e-3), spec.name
        segment = group.referenced_segment
        assert segment.referenced_sop_instance_uid == seg.sop_instance_uid
        assert segment.referenced_segment_numbers == [numbers[label]]
        assert segment.source_series_for_segmentation.value == volume.series_instance_uid
        (site,) = group.finding_sites
        assert site.value.value == spec.type.value
        # Finding and Finding Category are left to the referenced segment, which holds them
        assert group.finding_type is None and group.finding_category is None
        (item,) = [s for s in seg.dataset.SegmentSequence if s.SegmentNumber == numbers[label]]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == site.value.value
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == spec.category.value
        if spec.modifier is None:
            assert site.laterality is None
        else:
            assert site.laterality.value == spec.modifier.value


@pytest.mark.parametrize(
    ("label", "border", "implausible"),
    [
        (SPLEEN, "No", "Yes"),  # 30 ml < 40 ml
        (LIVER, "No", "No"),  # 150 ml >= 100 ml
        (KIDNEY_RIGHT, "Yes", "No"),  # on the first column; 60 ml >= 50 ml
        (KIDNEY_LEFT, "Yes", "Yes"),  # on the last slice; 25 ml < 30 ml
        (ADRENAL_RIGHT, "No", "No"),  # 2 ml >= 1 ml
        (PROSTATE, "Yes", ""),  # on the first row; no cut-off: no plausibility evaluation
    ],
)
def test_border_and_plausibility_flags(
    encoded: tuple[Any, EncodedSeg, Dataset], label: int, border: str, implausible: str
) -> None:
    group = groups_by_name(encoded[2])[SEGMENTS[label].name]
    assert evaluation(group, BORDER_CODE) == border
    assert evaluation(group, IMPLAUSIBLE_CODE) == implausible


def test_results_rows_are_the_sr_numbers(volume: Volume, encoded: tuple[Any, Any, Dataset]) -> None:
    label_map, _, sr = encoded
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    groups = groups_by_name(sr)
    rows = volumetry.result_rows([report])
    assert len(rows) == len(groups)
    for row in rows:
        (measurement,) = groups[row["display_name"]].get_measurements()
        assert float(measurement.value) == pytest.approx(row["volume_ml"], rel=1e-9)
    csv_text = volumetry.to_csv(rows)
    assert csv_text.splitlines()[0] == ",".join(volumetry.RESULT_COLUMNS)
    assert len(csv_text.splitlines()) == len(rows) + 1


def test_uids_are_deterministic(volume: Volume, encoded: tuple[npt.NDArray[np.uint8], Any, Dataset]) -> None:
    label_map, _, sr = encoded
    _, again = encode(volume, label_map)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (sr.SeriesInstanceUID, sr.SOPInstanceUID)
    _, other = encode(volume, label_map, config_fingerprint="other")  # other SEG settings: other identity
    assert other.SOPInstanceUID != sr.SOPInstanceUID


def test_a_label_outside_the_catalog_is_refused(volume: Volume) -> None:
    label_map = np.zeros(volume.shape, dtype=np.uint8)
    label_map[10:20, 10:20, 5] = 200
    with pytest.raises(DerivedEncodingError, match="label 200 of task 'total_mr' is not in the structure"):
        volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))


def file_bytes(dataset: Dataset) -> bytes:
    out = pydicom.filebase.DicomBytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:.*unlikely to represent the intended person name")
def test_the_document_is_the_one_highdicom_makes_from_the_whole_report(
    volume: Volume, encoded: tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]
) -> None:
    """encode_volumetry_sr lets highdicom's constructor make the document around the first group, adds the
    others to its content and encodes the content itself (each shared item once): the file is the one
    highdicom's constructor and pydicom's writer make for the whole report, but for the times."""
    label_map, seg, _ = encoded
    _, sr = encode(volume, label_map)  # fresh: its Content Sequence held as the bytes it is written with
    assert sr.get_item(0x0040A730).is_raw
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    groups = measurement_groups(context, report, seg, SEGMENTS)
    assert len(groups) == len(report.structures) > 1
    whole = hd.sr.Comprehensive3DSR(
        content=measurement_report(context, groups), **document_arguments(context, seg)
    )
    set_equipment(whole, context.options)
    for keyword in ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime"):
        whole[keyword].value = sr[keyword].value
    for mine, made in zip(whole.ContributingEquipmentSequence, sr.ContributingEquipmentSequence, strict=True):
        if "ContributionDateTime" in made:
            mine.ContributionDateTime = made.ContributionDateTime
    assert file_bytes(sr) == file_bytes(whole)
    names = [
        g.tracking_identifier
        for g in hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
    ]
    assert names == [SEGMENTS[s.label].name for s in report.structures]


def item_bytes(item: Dataset) -> bytes:
    """A content item as pydicom's writer writes it in a Content Sequence."""
    holder = Dataset()
    holder.ContentSequence = [item]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, holder)
    return fp.getvalue()


def test_the_groups_after_the_first_of_a_shape_hold_what_highdicom_s_template_makes(
    volume: Volume, encoded: tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]
) -> None:
    """Each group after the first of its shape (its parts' item counts: a structure without a cut-off has
    one evaluation fewer) is the first's container with the structure's own items in their places: as
    written, the group highdicom's template makes for the structure."""
    label_map, seg, _ = encoded
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    shared, parts = _all_parts(context, report, seg, SEGMENTS)
    assert len({p.shape() for p in parts}) == 2
    first = _group(shared, parts[0])
    assert _Layout(first, parts[0]).usable
    made = _other_groups(shared, parts, first)
    # the prostate (no cut-off) is the first of its shape: made by the template; the others by the layout
    assert sum(not isinstance(m, hd.sr.ContentItem) for m in made) == len(parts) - 2
    for mine, own in zip(made, parts[1:], strict=True):
        (reference,) = _group(shared, own)
        assert item_bytes(mine) == item_bytes(reference)


def test_a_group_that_does_not_hold_its_parts_is_no_layout_and_highdicom_makes_the_others(
    volume: Volume, encoded: tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]
) -> None:
    """Where the first group does not hold its parts' items (they cannot be found in it), the groups of its
    shape are made by highdicom's template, each."""
    label_map, seg, _ = encoded
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    shared, parts = _all_parts(context, report, seg, SEGMENTS)
    stranger = _group(shared, parts[1])
    assert not _Layout(stranger, parts[0]).usable
    made = _other_groups(shared, parts, stranger)
    assert all(isinstance(m, hd.sr.ContentItem) for m in made)
    for mine, own in zip(made, parts[1:], strict=True):
        (reference,) = _group(shared, own)
        assert item_bytes(mine) == item_bytes(reference)


def test_content_is_written_as_pydicom_writes_it_where_values_repeat_under_other_tags_and_charsets() -> None:
    """The content's elements are encoded once per tag, VR, value and character set: the same value under
    another tag, or in an item with another character set, is written as pydicom writes it."""
    document = Dataset()
    document.SpecificCharacterSet = "ISO_IR 100"
    outer, inner, twin = Dataset(), Dataset(), Dataset()
    outer.CodeValue = outer.CodingSchemeDesignator = outer.CodeMeaning = "SAME"
    outer.TextValue = "Müller"
    outer.ReferencedSegmentNumber = outer.ReferencedFrameNumber = 7
    inner.SpecificCharacterSet = "ISO_IR 192"
    inner.TextValue = "Müller"
    inner.CodeValue = "SAME"
    twin.TextValue = "Müller"
    outer.ContentSequence = [inner, twin]
    document.ContentSequence = [outer, twin]
    expected = DicomBytesIO()
    expected.is_little_endian, expected.is_implicit_VR = True, False
    write_dataset(expected, document)
    _content_as_written(document)
    mine = DicomBytesIO()
    mine.is_little_endian, mine.is_implicit_VR = True, False
    write_dataset(mine, document)
    assert mine.getvalue() == expected.getvalue()


def test_a_report_without_structures_is_refused(
    volume: Volume, encoded: tuple[npt.NDArray[np.uint8], EncodedSeg, Dataset]
) -> None:
    label_map, seg, _ = encoded
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    report = volumetry.measure(volume, label_map, "total_mr", volumetry.catalog_names("total_mr"))
    with pytest.raises(DerivedEncodingError, match="no structure to report"):
        encode_volumetry_sr(context, replace(report, structures=()), seg, SEGMENTS)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", {})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.e2e
def test_sr_lands_in_orthanc_in_the_study_and_references_the_seg(
    orthanc: Orthanc, volume: Volume, encoded: tuple[Any, EncodedSeg, Dataset]
) -> None:
    _, seg, sr = encoded
    orthanc.upload(sorted(PD_TRA.glob("*.dcm")))
    destination = DestinationConfig(ae_title=Orthanc.AE_TITLE, host="127.0.0.1", port=orthanc.dicom_port)
    result = send_datasets([seg.dataset, sr], "orthanc", destination, SendingConfig())
    assert result.delivered, result
    (found,) = orthanc.lookup(str(sr.SOPInstanceUID))
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(found["ID"])))
    study = orthanc.get(f"/instances/{found['ID']}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == volume.study_instance_uid
    source_study = orthanc.lookup(volume.study_instance_uid)[0]["ID"]
    assert study["ID"] == source_study
    groups = groups_by_name(stored)
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups.values()} == {
        seg.sop_instance_uid
    }
    evidence = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert seg.series_instance_uid in {str(item.SeriesInstanceUID) for item in evidence}
