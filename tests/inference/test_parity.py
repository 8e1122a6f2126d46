"""Parity: SegNode's engine and the official TotalSegmentator 2.18 command give the same label maps.

Both run the tiny test models (a copy of tests/data/models as TotalSegmentator's ``TOTALSEG_WEIGHTS_PATH``)
on real MRI series: TotalSegmentator from the DICOM folder (it converts with dicom2nifti and writes the label
map in dicom2nifti's geometry), SegNode from ``conversion.load_series``. The two maps are compared in a common
geometry (both reoriented to the closest canonical orientation, whose affines must agree): Dice >= 0.999 for
every label present in either. Slow: each official run takes over a minute on two cores.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from official_totalseg import copy_weights, run_totalsegmentator

from conversion import load_series
from inference.engine import Engine
from tests.support.paths import MODELS, SHARED_MRI, T2_SAG
from tests.support.series import positions_along_normal

SERIES = {
    # sagittal T2 (19 slices 320x320, 0.56 x 0.56 x 3.6 mm): reorientation and anisotropic zoom
    "prostatex_t2_sagittal": T2_SAG,
    # axial abdominal T2 (584x512, 0.68 x 0.68 x 8 mm), from the full set beside the checkout
    "abdomen_t2_axial": SHARED_MRI / "cmb_crc_abdomen/SCAN_001_AX_T2",
}
#: Contiguous slices of a series the comparison keeps (all when absent): the official command resamples the
#: whole abdominal T2 (33 slices) with scipy, well over a minute on two cores; its middle 16 slices keep the
#: geometry that matters (584x512 in-plane, 8 mm slices, a 1.5 mm grid of over 100 planes).
SLABS = {"abdomen_t2_axial": 16}


def middle_slices(folder: Path, count: int | None, dest: Path) -> Path:
    """``folder`` itself, or a folder of links to its ``count`` middle slices in spatial order."""
    files = sorted(folder.glob("*.dcm"))
    if count is None or count >= len(files):
        return folder
    positions = positions_along_normal([pydicom.dcmread(f, stop_before_pixels=True) for f in files])
    ordered = [f for _, f in sorted(zip(positions, files, strict=True))]
    start = (len(ordered) - count) // 2
    dest.mkdir()
    for f in ordered[start : start + count]:
        (dest / f.name).symlink_to(f)
    return dest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@pytest.fixture(scope="module")
def official_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_weights(MODELS, tmp_path_factory.mktemp("weights") / "nnunet")


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])
@pytest.mark.parametrize("series", sorted(SERIES))
def test_same_label_map_as_totalsegmentator(
    series: str, fast: bool, engine: Engine, official_weights: Path, tmp_path: Path
) -> None:
    source = SERIES[series]
    if not source.is_dir():
        pytest.skip(f"{source} absent (the full MRI set lies only beside a developer checkout and in CI)")
    folder = middle_slices(source, SLABS.get(series), tmp_path / "series")
    out = tmp_path / "totalseg.nii.gz"
    run_totalsegmentator(folder, out, official_weights, tmp_path / "home", fast=fast, timeout=3000)
    official = nib.as_closest_canonical(nib.load(out))

    volume = load_series(sorted(folder.glob("*.dcm")))[0]
    result = engine.segment(volume.voxels, volume.affine, task="total_mr", fast=fast)
    ours = nib.as_closest_canonical(nib.Nifti1Image(result.labels, volume.affine_ras))

    assert ours.shape == official.shape
    np.testing.assert_allclose(ours.affine, official.affine, atol=1e-3)
    a = np.asanyarray(ours.dataobj).astype(np.int32)
    b = np.asanyarray(official.dataobj).astype(np.int32)
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    assert labels, f"{series}: the tiny models find no structure; the comparison would be empty"
    scores = {result.class_map[int(v)]: dice(a == v, b == v) for v in labels}
    low = {name: round(d, 5) for name, d in scores.items() if d < 0.999}
    assert not low, f"{series} ({'fast' if fast else 'default'}): Dice < 0.999 for {low}; all: {scores}"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_roi_subset_same_as_totalsegmentator(engine: Engine, official_weights: Path, tmp_path: Path) -> None:
    """``roi_subset`` end to end: the crop found with the 3 mm model, the full-resolution models on the crop,
    only the asked structures kept; compared with the official command's ``--roi_subset``."""
    folder = SERIES["prostatex_t2_sagittal"]
    volume = load_series(sorted(folder.glob("*.dcm")))[0]
    # the tiny 3 mm model finds kidney_left here (the crop), the tiny 1.5 mm models the vena cava in the crop
    wanted = ["inferior_vena_cava", "kidney_left"]
    fast = engine.segment(volume.voxels, volume.affine, task="total_mr", fast=True)
    assert "kidney_left" in {fast.class_map[v] for v in fast.present_labels()}
    result = engine.segment(volume.voxels, volume.affine, task="total_mr", roi_subset=wanted)
    out = tmp_path / "totalseg.nii.gz"
    run_totalsegmentator(folder, out, official_weights, tmp_path / "home", roi_subset=wanted, timeout=3000)
    official = nib.as_closest_canonical(nib.load(out))
    ours = nib.as_closest_canonical(nib.Nifti1Image(result.labels, volume.affine_ras))
    assert ours.shape == official.shape
    np.testing.assert_allclose(ours.affine, official.affine, atol=1e-3)
    a = np.asanyarray(ours.dataobj).astype(np.int32)
    b = np.asanyarray(official.dataobj).astype(np.int32)
    names = {result.class_map[int(v)] for v in set(np.unique(a)) - {0}}
    assert names <= set(wanted), f"structures outside roi_subset {wanted}: {names}"
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    assert labels, f"roi_subset {wanted}: both label maps are empty; the comparison would say nothing"
    scores = {result.class_map[int(v)]: dice(a == v, b == v) for v in labels}
    low = {name: round(d, 5) for name, d in scores.items() if d < 0.999}
    assert not low, f"roi_subset {wanted}: Dice < 0.999 for {low}; all: {scores}"
