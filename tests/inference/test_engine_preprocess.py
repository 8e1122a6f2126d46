"""SegNode's pre/post-processing equals TotalSegmentator 2.18's own functions, voxel for voxel.

TotalSegmentator's functions (``alignment.as_closest_canonical``/``undo_canonical``,
``resampling.change_spacing``, ``cropping.crop_to_mask``) run on nibabel images of real MRI; SegNode's run on
the arrays. The torch versions used on a GPU are checked against scipy here on the CPU (the same float64
arithmetic, kernel by kernel).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from totalsegmentator.alignment import as_closest_canonical, undo_canonical
from totalsegmentator.cropping import crop_to_mask
from totalsegmentator.resampling import change_spacing

from conversion import Volume, load_series
from inference import gpu_resample, preprocess
from tests.support.paths import CINE, PD_TRA, T2_COR, T2_SAG

SERIES = {
    "sagittal": T2_SAG,
    "coronal_oblique": T2_COR,
    "axial_oblique_3d": PD_TRA,
    "cardiac_double_oblique": CINE,
}


@pytest.fixture(scope="module", params=sorted(SERIES))
def volume(request: pytest.FixtureRequest) -> Volume:
    return load_series(sorted(SERIES[request.param].glob("*.dcm")))[0]


def _nifti(volume: Volume) -> nib.Nifti1Image:
    # what TotalSegmentator works on after loading: float64 data, the image's affine
    return nib.Nifti1Image(volume.voxels.astype(np.float64), volume.affine_ras)


@pytest.mark.parametrize("spacing", [1.5, 3.0])
def test_canonical_and_zoom_equal_totalsegmentator(volume: Volume, spacing: float) -> None:
    ts_can = as_closest_canonical(_nifti(volume))
    ts_rsp = change_spacing(ts_can, [spacing] * 3, order=1, dtype=np.int32, nr_cpus=1)
    ours = preprocess.to_canonical(volume.voxels.astype(np.float64), volume.affine_ras)
    np.testing.assert_array_equal(ours.data, ts_can.get_fdata())
    np.testing.assert_allclose(ours.affine, ts_can.affine, atol=1e-9)
    zoom = preprocess.zoom_factors(preprocess.header_zooms(ours.affine), spacing)
    assert zoom is not None
    image = preprocess.resample_image_cpu(ours.data, zoom)
    assert image.dtype == np.int32
    np.testing.assert_array_equal(image, np.asanyarray(ts_rsp.dataobj))
    # the torch version (used on CUDA) gives the same voxels
    shape = preprocess.zoomed_shape(ours.data.shape, zoom)
    np.testing.assert_array_equal(gpu_resample.zoom_linear(ours.data, shape, "cpu"), image)


def test_labels_back_equal_totalsegmentator(volume: Volume) -> None:
    ts_can = as_closest_canonical(_nifti(volume))
    ts_rsp = change_spacing(ts_can, [3.0] * 3, order=1, dtype=np.int32, nr_cpus=1)
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 51, ts_rsp.shape).astype(np.uint8)
    ts_back = change_spacing(
        nib.Nifti1Image(labels, ts_rsp.affine),
        [3.0] * 3,
        ts_can.shape,
        order=0,
        dtype=np.uint8,
        nr_cpus=1,
        force_affine=ts_can.affine,
    )
    ts_orig = undo_canonical(ts_back, _nifti(volume))
    ours_can = preprocess.to_canonical(volume.voxels, volume.affine_ras)
    back = preprocess.resample_labels_cpu(labels, ours_can.data.shape)
    np.testing.assert_array_equal(back, np.asanyarray(ts_back.dataobj))
    np.testing.assert_array_equal(gpu_resample.zoom_nearest(labels, ours_can.data.shape, "cpu"), back)
    restored = preprocess.from_canonical(back, ours_can.source_ornt)
    assert restored.shape == volume.shape
    np.testing.assert_array_equal(restored, np.asanyarray(ts_orig.dataobj))


def test_roi_crop_equals_totalsegmentator(volume: Volume) -> None:
    mask = np.zeros(volume.shape, np.uint8)
    i, j, k = (n // 3 for n in volume.shape)
    mask[i : 2 * i, j : j + 3, k : k + 2] = 1
    ts_img, ts_bbox = crop_to_mask(
        _nifti(volume), nib.Nifti1Image(mask, volume.affine_ras), addon=[20, 20, 20], dtype=np.int32
    )
    bbox = preprocess.roi_bbox(mask.astype(bool), preprocess.header_zooms(volume.affine_ras))
    assert bbox is not None and [list(b) for b in bbox] == ts_bbox
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    np.testing.assert_array_equal(volume.voxels.astype(np.float64)[sl].astype(np.int32), ts_img.get_fdata())
    np.testing.assert_allclose(
        preprocess.crop_affine(volume.affine_ras, (bbox[0][0], bbox[1][0], bbox[2][0])),
        ts_img.affine,
        atol=1e-9,
    )
    assert preprocess.roi_bbox(np.zeros((4, 4, 4), bool), np.ones(3, np.float32)) is None


def test_no_resampling_when_already_at_model_spacing() -> None:
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    assert preprocess.zoom_factors(preprocess.header_zooms(affine), 1.5) is None
    assert preprocess.zoom_factors(preprocess.header_zooms(affine), 3.0) is not None


def test_triple_split_recombines_like_totalsegmentator() -> None:
    depth = 301
    bounds = preprocess.triple_split_bounds(depth)
    data = np.arange(depth, dtype=np.int64)[None, None, :].repeat(2, 0).repeat(2, 1)
    parts = [data[:, :, lo:hi] for lo, hi in bounds]
    np.testing.assert_array_equal(preprocess.triple_split_merge(parts, depth), data)


def test_zoom_linear_matches_scipy_bit_for_bit_on_ties() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(4, 30, 3))
        data = rng.integers(0, 6, shape).astype(np.float64)  # many equal neighbours: truncation edge cases
        zoom = rng.uniform(0.4, 2.6, 3)
        expected = ndimage.zoom(data, zoom, order=1, mode="nearest")
        got = gpu_resample.zoom_linear(data, expected.shape, "cpu")
        np.testing.assert_array_equal(got, expected.astype(np.int32))
