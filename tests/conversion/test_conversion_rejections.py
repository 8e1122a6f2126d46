"""Every reason a series cannot be segmented, with real data where the test data has it.

Where the test data has no such series (localizers, CT gantry tilt, gaps), the real series below are
modified in memory in the one way that makes them so, and the test says what was changed.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info

from conversion import NotSegmentableError, Reason, load_series
from tests.support.paths import SHARED_MRI, TEST_MRI, series_files

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")

SAG = TEST_MRI / "prostatex" / "ProstateX-0000_3.000000-t2tsesag-87368"
COR = TEST_MRI / "prostatex" / "ProstateX-0000_5.000000-t2tsecor-03471"
PD = TEST_MRI / "prostatex" / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
DWI = TEST_MRI / "prostatex" / "ProstateX-0000_6.000000-ep2ddifftraDYNDIST-69284"


def _reason(items: list[object], **kwargs: object) -> NotSegmentableError:
    with pytest.raises(NotSegmentableError) as info:
        load_series(items, **kwargs)  # type: ignore[arg-type]
    return info.value


def _datasets(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in series_files(folder)]


def _sorted_by_position(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def test_single_slice_real_philips_j2k() -> None:
    err = _reason(series_files(TEST_MRI / "pydicom_data" / "MR2_J2KI_Philips_shoulder_lossy"))
    assert err.reason == Reason.SINGLE_SLICE == "single_slice"
    assert 'series 1 "T1W/SE/1024" (1.3.6.1.4.1.5962.1.3.5.1.20040826185059.5457)' in err.message
    assert "single image" in err.message


def test_mosaic_real_siemens() -> None:
    err = _reason(series_files(TEST_MRI / "dcm_qa_ts" / "ax_asc_35sl_9_transfer_syntaxes"))
    assert err.reason == "unsupported_mosaic"
    assert 'series 1 "ax_asc_35sl"' in err.message and "MOSAIC" in err.message


def test_missing_geometry_real_enhanced_object_without_functional_groups() -> None:
    err = _reason(series_files(TEST_MRI / "pydicom_data" / "emri_small_EnhancedMR_RLE"))
    assert err.reason == "missing_geometry"
    assert "Image Position/Orientation" in err.message


def test_mixed_series_real_sagittal_and_coronal() -> None:
    err = _reason(series_files(SAG) + series_files(COR))
    assert err.reason == "mixed_series"
    assert "2 different series" in err.message and "t2_tse_sag" in err.message and "t2_tse_cor" in err.message


def test_no_pixel_data_real_rtstruct() -> None:
    if not SHARED_MRI.is_dir():
        pytest.skip(f"full MRI test set not present at {SHARED_MRI}")
    err = _reason(series_files(SHARED_MRI / "sts_sarcoma" / "STS_001_raw_AX_SE_T1_RTSTRUCT"))
    assert err.reason == "no_pixel_data"
    assert "1.2.840.10008.5.1.4.1.1.481.3" in err.message


def test_no_pixel_data_when_pixel_data_is_stripped() -> None:
    datasets = _datasets(PD)
    for ds in datasets:
        del ds.PixelData
    err = _reason(datasets)
    assert err.reason == "no_pixel_data"
    assert "none of its 16 instance(s) carries pixel data" in err.message


def test_no_instances() -> None:
    assert _reason([]).reason == "no_pixel_data"


def test_missing_slice_real_series_with_one_file_removed() -> None:
    files = [pydicom.dcmread(f, stop_before_pixels=True) for f in series_files(SAG)]
    ordered = _sorted_by_position(files)
    gone = ordered[7].SOPInstanceUID
    paths = [
        f for f in series_files(SAG) if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID != gone
    ]
    err = _reason(paths)
    assert err.reason == "missing_slices"
    assert "missing 1 slice(s)" in err.message and "t2_tse_sag" in err.message


def _stretch_upper_half(datasets: list[pydicom.Dataset], factor: float) -> list[pydicom.Dataset]:
    """Move the upper half of the slices apart along the normal: spacing becomes non-uniform."""
    ordered = _sorted_by_position(datasets)
    iop = np.asarray(ordered[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    half = len(ordered) // 2
    step = float(
        (np.asarray(ordered[1].ImagePositionPatient, dtype=float) - ordered[0].ImagePositionPatient) @ normal
    )
    for n, ds in enumerate(ordered[half:], start=1):
        pos = np.asarray(ds.ImagePositionPatient, dtype=float) + normal * step * (factor - 1.0) * n
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    return ordered


def test_non_uniform_spacing_rejected_by_default() -> None:
    err = _reason(_stretch_upper_half(_datasets(PD), 1.5))
    assert err.reason == "non_uniform_spacing"
    assert "non-uniform slice spacing (3 to 4.5 mm)" in err.message


def test_non_uniform_spacing_resampled_on_request() -> None:
    datasets = _stretch_upper_half(_datasets(PD), 1.5)
    (volume,) = load_series(datasets, non_uniform="resample")
    assert volume.resampled
    assert volume.spacing[2] == pytest.approx(3.0, abs=1e-3)
    # 8 slices 3 mm apart then 8 slices 4.5 mm apart: 21 + 36 = 57 mm -> 20 uniform slices of 3 mm
    assert volume.shape[2] == 20
    first = _sorted_by_position(datasets)[0]
    np.testing.assert_array_equal(volume.voxels[:, :, 0], first.pixel_array.T.astype(np.float32))
    np.testing.assert_allclose(volume.affine[:3, 3], np.asarray(first.ImagePositionPatient, dtype=float))
    # a resampled slice midway between two source slices is their mean
    ordered = _sorted_by_position(datasets)
    a, b = ordered[8].pixel_array.astype(np.float32), ordered[9].pixel_array.astype(np.float32)
    # source 8 at 3*7 + 4.5 = 25.5 mm, source 9 at 30 mm; target slice 9 at 27 mm: weight 1/3 on source 9
    np.testing.assert_allclose(volume.voxels[:, :, 9], (a * (2 / 3) + b * (1 / 3)).T, rtol=1e-5, atol=1e-3)
    assert volume.slice_refs[9].sop_instance_uid == ordered[8].SOPInstanceUID


def test_localizer_by_image_type() -> None:
    datasets = _datasets(PD)
    for ds in datasets:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    err = _reason(datasets)
    assert err.reason == "localizer"


def test_localizer_three_plane_by_description() -> None:
    parts = [_datasets(SAG)[:3], _datasets(COR)[:3], _datasets(PD)[:3]]
    datasets = [ds for part in parts for ds in part]
    for ds in datasets:
        ds.SeriesInstanceUID = datasets[0].SeriesInstanceUID
        ds.SeriesDescription = "localizer"
    err = _reason(datasets)
    assert err.reason == "localizer"
    assert '"localizer"' in err.message


def test_inconsistent_orientation_one_image_per_plane() -> None:
    datasets = [_datasets(SAG)[0], _datasets(COR)[0], _datasets(PD)[0]]
    for ds in datasets:
        ds.SeriesInstanceUID = datasets[0].SeriesInstanceUID
    err = _reason(datasets)
    assert err.reason == "inconsistent_orientation"
    assert "3 different orientations" in err.message


def _shear(datasets: list[pydicom.Dataset], degrees: float) -> list[pydicom.Dataset]:
    ordered = _sorted_by_position(datasets)
    iop = np.asarray(ordered[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.asarray(ordered[0].ImagePositionPatient, dtype=float)
    for ds in ordered:
        pos = np.asarray(ds.ImagePositionPatient, dtype=float)
        pos = pos + iop[3:] * float((pos - origin) @ normal) * np.tan(np.radians(degrees))
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    return ordered


def test_gantry_tilt_ct_rejected() -> None:
    datasets = _shear(_datasets(PD), 15.0)
    for ds in datasets:
        ds.Modality = "CT"
        ds.GantryDetectorTilt = 15
    err = _reason(datasets)
    assert err.reason == "gantry_tilt"
    assert "15" in err.message


def test_sheared_ct_without_tilt_attribute_rejected_as_gantry_tilt() -> None:
    datasets = _shear(_datasets(PD), 10.0)
    for ds in datasets:
        ds.Modality = "CT"
    err = _reason(datasets)
    assert err.reason == "gantry_tilt"
    assert "10.00 degrees" in err.message


def test_sheared_mr_rejected_as_inconsistent_geometry() -> None:
    err = _reason(_shear(_datasets(PD), 5.0))
    assert err.reason == "inconsistent_geometry"


def test_colour_images_rejected() -> None:
    datasets = _datasets(PD)
    for ds in datasets:
        ds.PhotometricInterpretation = "RGB"
        ds.SamplesPerPixel = 3
    err = _reason(datasets)
    assert err.reason == "unsupported_pixels"


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_dicom.dcm"
    bad.write_bytes(b"\x00" * 10)
    err = _reason([bad])
    assert err.reason == "unreadable"
    assert "file not_dicom.dcm" in err.message
    assert str(tmp_path) not in err.message  # names the file, not the folder (the node's spool)


def test_undecodable_transfer_syntax_without_decoder(tmp_path: Path) -> None:
    """Files labelled with a transfer syntax no installed decoder handles (JPEG XL, new in pydicom 3.1)."""
    paths = []
    for n, ds in enumerate(_datasets(PD)):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.840.10008.1.2.4.110")
        path = tmp_path / f"{n}.dcm"
        with path.open("wb") as raw:  # pydicom refuses to save an unknown transfer syntax: write the parts
            raw.write(b"\x00" * 128 + b"DICM")
            fp = DicomFileLike(raw)
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_file_meta_info(fp, ds.file_meta, enforce_standard=False)
            write_dataset(fp, ds)
        paths.append(path)
    err = _reason(paths)
    assert err.reason == "undecodable_pixels"
    assert "no decoder for the transfer syntax" in err.message


def test_undecodable_corrupt_jpeg2000(tmp_path: Path) -> None:
    paths = []
    for n, ds in enumerate(_datasets(PD)):
        ds.compress(pydicom.uid.JPEG2000Lossless)
        if n == 4:
            frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
            ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 8]])
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path)
        paths.append(path)
    err = _reason(paths)
    assert err.reason == "undecodable_pixels"
    victim = pydicom.dcmread(paths[4], stop_before_pixels=True).SOPInstanceUID
    assert f"instance {victim}" in err.message and "cannot be decoded" in err.message
    assert str(tmp_path) not in err.message


def test_a_bad_stack_is_left_out_when_others_are_segmentable(caplog: pytest.LogCaptureFixture) -> None:
    datasets = _datasets(DWI)
    b50 = [ds for ds in datasets if b"50" == ds[0x0019100C].value.strip()]
    victim = _sorted_by_position(b50)[5]
    kept = [ds for ds in datasets if ds is not victim]
    volumes = load_series(copy.deepcopy(kept))
    assert [v.stack_label for v in volumes] == ["b=400", "b=800"]
    assert "1 stack(s) left out: b=50: missing slices" in caplog.text


def test_bad_policy_value() -> None:
    with pytest.raises(ValueError, match="non_uniform"):
        load_series(series_files(PD), non_uniform="stretch")  # type: ignore[arg-type]


def test_undecodable_truncated_uncompressed_file(tmp_path: Path) -> None:
    """A real file cut short inside its pixel data (as after an interrupted copy)."""
    paths = []
    for n, f in enumerate(series_files(PD)):
        path = tmp_path / f"{n}.dcm"
        data = f.read_bytes()
        path.write_bytes(data[:-5000] if n == 3 else data)
        paths.append(path)
    err = _reason(paths)
    assert err.reason == "undecodable_pixels"
    assert f"instance {pydicom.dcmread(paths[3], stop_before_pixels=True).SOPInstanceUID}" in err.message
    assert str(tmp_path) not in err.message


def test_a_single_slice_cine_gets_one_reason_for_all_its_temporal_positions() -> None:
    """19 images at one slice position, one per temporal position (a 2D cine): one stack per temporal
    position, each a single slice. The reason says so once instead of 19 times, and what to do."""
    base = _datasets(SAG)[5]
    cine = []
    for n in range(19):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.TemporalPositionIdentifier = n + 1
        cine.append(ds)
    err = _reason(cine)
    assert err.reason == "single_slice"
    assert err.message == (
        'none of the 19 stacks of series 3 "t2_tse_sag" (1.3.6.1.4.1.14519.5.2.1.7311.5101.2509118588407678'
        "91342974687368) can be segmented: 19 temporal positions, each a single slice; there is no volume to "
        "segment (route such series to ignore)"
    )
