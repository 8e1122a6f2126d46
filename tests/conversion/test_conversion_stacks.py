"""Stacks of real series: grouping by distinguishing attribute, slice order, oblique geometry, references."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conversion import load_series, plan_series, to_nibabel, to_sitk
from tests.support.paths import SHARED_MRI, TEST_MRI, series_files

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

SAG = TEST_MRI / "prostatex" / "ProstateX-0000_3.000000-t2tsesag-87368"
COR = TEST_MRI / "prostatex" / "ProstateX-0000_5.000000-t2tsecor-03471"
DWI = TEST_MRI / "prostatex" / "ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284"
PD = TEST_MRI / "prostatex" / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
FMAP = TEST_MRI / "dcm_qa_enh" / "Philips_EnhancedMR_fMAP"
XA10 = TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol"
CINE1 = TEST_MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX_phase1"


def test_dwi_series_gives_one_stack_per_b_value_from_the_siemens_private_header() -> None:
    volumes = load_series(series_files(DWI))
    assert [v.stack_key for v in volumes] == [{"b_value": 50}, {"b_value": 400}, {"b_value": 800}]
    assert [v.stack_label for v in volumes] == ["b=50", "b=400", "b=800"]
    for v in volumes:
        assert v.shape == (84, 128, 19)
        np.testing.assert_allclose(v.affine, volumes[0].affine)
        assert len({r.sop_instance_uid for r in v.slice_refs}) == 19


def test_b_value_stacks_do_not_share_instances() -> None:
    volumes = load_series(series_files(DWI))
    uids = [r.sop_instance_uid for v in volumes for r in v.slice_refs]
    assert len(uids) == len(set(uids)) == 57


def test_enhanced_mr_with_magnitude_and_field_map_frames_gives_two_stacks_by_frame_type() -> None:
    volumes = load_series(series_files(FMAP))
    assert [v.stack_key["image_type"].split("\\")[-1] for v in volumes] == ["FIELD_MAP", "M"]
    for v in volumes:
        assert v.shape == (64, 64, 32)
        assert {r.sop_instance_uid for r in v.slice_refs} == {v.first_header.SOPInstanceUID}
        assert all(r.frame_number is not None and 1 <= r.frame_number <= 64 for r in v.slice_refs)
    field_map = volumes[0]
    assert float(field_map.voxels.min()) < 0  # RescaleIntercept -500 of the field-map frames applied


def test_enhanced_mr_one_volume_per_file_gives_four_temporal_stacks() -> None:
    volumes = load_series(series_files(XA10))
    assert [v.stack_key for v in volumes] == [{"temporal_position": t} for t in (1, 2, 3, 4)]
    assert [len(v.source_headers) for v in volumes] == [1, 1, 1, 1]
    assert len({v.source_headers[0].SOPInstanceUID for v in volumes}) == 4


def test_cine_phases_split_by_trigger_time_rank(tmp_path: Path) -> None:
    if not SHARED_MRI.is_dir():
        pytest.skip(f"full MRI test set not present at {SHARED_MRI}")
    volumes = load_series(series_files(SHARED_MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX"))
    assert [v.stack_key for v in volumes] == [{"cardiac_phase": p} for p in range(1, 21)]
    assert all(v.shape == (256, 256, 12) for v in volumes)


def test_tolerant_reading_of_invalid_uids_single_cine_phase() -> None:
    """UIDs with leading-zero components (invalid, pydicom warns on them) are read as they are."""
    files = series_files(CINE1)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        expected = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    (volume,) = load_series(files)
    assert volume.shape == (256, 256, 12)
    assert volume.study_instance_uid == expected and expected.startswith("2.16.124.113543.6006.99.0")


def test_slice_order_follows_positions_not_file_or_instance_order() -> None:
    files = series_files(SAG)
    (reference,) = load_series(files)
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)  # reversed numbering
    random.Random(3).shuffle(datasets)
    (shuffled,) = load_series(datasets)
    np.testing.assert_array_equal(shuffled.voxels, reference.voxels)
    np.testing.assert_allclose(shuffled.affine, reference.affine)
    assert shuffled.slice_refs == reference.slice_refs
    positions = {str(ds.SOPInstanceUID): np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets}
    normal = np.cross(reference.affine[:3, 0], reference.affine[:3, 1])
    along = [float(positions[r.sop_instance_uid] @ normal) for r in reference.slice_refs]
    assert along == sorted(along)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_affine_follows_the_dicom_header_lps_and_ras() -> None:
    files = series_files(COR)
    (volume,) = load_series(files)
    first = pydicom.dcmread(next(f for f in files if _uid(f) == volume.slice_refs[0].sop_instance_uid))
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    spacing = np.asarray(first.PixelSpacing, dtype=float)
    np.testing.assert_allclose(volume.affine[:3, 0], iop[:3] * spacing[1])
    np.testing.assert_allclose(volume.affine[:3, 1], iop[3:] * spacing[0])
    np.testing.assert_allclose(volume.affine[:3, 3], np.asarray(first.ImagePositionPatient, dtype=float))
    assert volume.spacing == pytest.approx((0.6, 0.6, 3.0), abs=1e-3)
    np.testing.assert_allclose(volume.affine_ras[:2], -volume.affine[:2])
    # oblique coronal (about 19 degrees) is kept oblique, not forced onto the axes
    col = volume.affine[:3, 1] / np.linalg.norm(volume.affine[:3, 1])
    assert 15 < np.degrees(np.arccos(abs(col[2]))) < 25
    assert volume.stack_label == "coronal"


def test_plane_labels_for_sagittal_and_axial() -> None:
    assert load_series(series_files(SAG))[0].stack_label == "sagittal"
    assert load_series(series_files(PD))[0].stack_label == "axial"


def test_same_instances_received_twice_are_kept_once() -> None:
    files = series_files(SAG)
    (volume,) = load_series(files + files[:5])
    assert volume.shape[2] == len(files)


def test_repeated_acquisition_with_nothing_to_tell_it_apart_gives_repetition_stacks() -> None:
    files = series_files(PD)
    first = [pydicom.dcmread(f) for f in files]
    second = [pydicom.dcmread(f) for f in files]
    for ds in second:
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "repeat"])
        ds.InstanceNumber = int(ds.InstanceNumber) + 100
    volumes = load_series(first + second)
    assert [v.stack_key for v in volumes] == [{"repetition": 1}, {"repetition": 2}]
    np.testing.assert_array_equal(volumes[0].voxels, volumes[1].voxels)
    assert {r.sop_instance_uid for r in volumes[1].slice_refs} == {str(ds.SOPInstanceUID) for ds in second}


def test_plan_series_reads_headers_only() -> None:
    stacks, sources, name = plan_series(series_files(DWI))
    assert len(stacks) == 3 and len(sources) == 57
    assert all(s.dataset is None and s.pixel_offset for s in sources)
    assert name.startswith('series 6 "ep2d_diff_tra_DYNDIST" (1.3.6.1.4.1.14519.')


def test_nibabel_and_simpleitk_views_agree_with_the_volume() -> None:
    (volume,) = load_series(series_files(COR))
    img = to_nibabel(volume)
    np.testing.assert_allclose(img.affine, volume.affine_ras)
    assert img.shape == volume.shape
    image = to_sitk(volume)
    assert image.GetSize() == volume.shape
    for ijk in [(0, 0, 0), (10, 200, 7), (319, 319, 14)]:
        world_lps = (volume.affine @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk), world_lps, atol=1e-6)
        assert image[ijk] == volume.voxels[ijk]


def _two_copies(change: dict[str, tuple[object, object]]) -> list[pydicom.Dataset]:
    """The PD series twice at the same positions, the copies differing only in ``change``."""
    files = series_files(PD)
    out = []
    for copy_index in (0, 1):
        for f in files:
            ds = pydicom.dcmread(f)
            if copy_index:
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "copy"])
            for keyword, values in change.items():
                setattr(ds, keyword, values[copy_index])
            out.append(ds)
    return out


@pytest.mark.parametrize(
    ("change", "key", "labels"),
    [
        ({"EchoNumbers": (1, 2), "EchoTime": (2.2, 4.4)}, "echo_number", ["echo 1", "echo 2"]),
        (
            {"TemporalPositionIdentifier": (1, 2)},
            "temporal_position",
            ["temporal position 1", "temporal position 2"],
        ),
        (
            {"ImageType": (["DERIVED", "PRIMARY", "DIXON", "WATER"], ["DERIVED", "PRIMARY", "DIXON", "FAT"])},
            "image_type",
            ["ImageType DERIVED\\PRIMARY\\DIXON\\FAT", "ImageType DERIVED\\PRIMARY\\DIXON\\WATER"],
        ),
        ({"AcquisitionNumber": (3, 4)}, "acquisition_number", ["acquisition 3", "acquisition 4"]),
        ({"DiffusionBValue": (0.0, 1000.0)}, "b_value", ["b=0", "b=1000"]),
    ],
)
def test_stacks_at_the_same_positions_are_told_apart_by_the_attribute_that_differs(
    change: dict[str, tuple[object, object]], key: str, labels: list[str]
) -> None:
    volumes = load_series(_two_copies(change))
    assert [list(v.stack_key) for v in volumes] == [[key], [key]]
    assert [v.stack_label for v in volumes] == labels
    assert all(v.shape == (128, 128, 16) for v in volumes)


def test_ge_private_b_value() -> None:
    datasets = _two_copies({})
    for n, ds in enumerate(datasets):
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x39, "IS", ["1000000000", "8", "0", "0"] if n < 16 else ["1000001000", "8", "0", "0"])
    assert [v.stack_key for v in load_series(datasets)] == [{"b_value": 0}, {"b_value": 1000}]
