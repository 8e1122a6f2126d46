"""Round trip: voxel (i, j, k) -> slice_refs[k] (SOP Instance UID, frame) -> stored pixel (row j, column i).

The stored pixel is read independently of the loader: the whole instance with ``dcmread`` and
``Dataset.pixel_array``, rescaled with the instance's (or the frame's functional group's) slope/intercept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conversion_reference import folder_params

from conversion import Volume, load_series
from tests.support.paths import SHARED_MRI, TEST_MRI, series_files

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def _rescale(ds: pydicom.Dataset, frame: int | None) -> tuple[float, float]:
    item = None
    if frame is not None:
        for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
            if groups is None:
                continue
            group = groups[frame] if len(groups) > 1 or frame == 0 else groups[0]
            if "PixelValueTransformationSequence" in group:
                item = group.PixelValueTransformationSequence[0]
                break
    item = item if item is not None else ds
    return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)


def _check_round_trip(volume: Volume, by_uid: dict[str, pydicom.Dataset]) -> None:
    cache: dict[str, np.ndarray[Any, Any]] = {}
    for k, ref in enumerate(volume.slice_refs):
        ds = by_uid[ref.sop_instance_uid]
        assert str(ds.SOPClassUID) == ref.sop_class_uid
        if ref.sop_instance_uid not in cache:
            cache[ref.sop_instance_uid] = ds.pixel_array
        stored = cache[ref.sop_instance_uid]
        frame = None if ref.frame_number is None else ref.frame_number - 1
        pixels = stored[frame] if frame is not None and stored.ndim == 3 else stored
        slope, intercept = _rescale(ds, frame)
        expected = pixels.astype(np.float64) * slope + intercept
        # voxel (i, j, k) is the stored pixel at row j, column i
        np.testing.assert_allclose(volume.voxels[:, :, k], expected.T, rtol=1e-6, atol=1e-4)
        i, j = volume.shape[0] // 3, volume.shape[1] // 2
        assert volume.voxels[i, j, k] == pytest.approx(expected[j, i], rel=1e-6, abs=1e-4)


def _round_trip(folder: Path) -> None:
    files = series_files(folder)
    by_uid = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_uid[str(ds.SOPInstanceUID)] = ds
    volumes = load_series(files)
    assert volumes
    for volume in volumes:
        assert len(volume.slice_refs) == volume.shape[2]
        _check_round_trip(volume, by_uid)
        assert {h.SOPInstanceUID for h in volume.source_headers} == {
            r.sop_instance_uid for r in volume.slice_refs
        }


@pytest.mark.parametrize("folder", folder_params(TEST_MRI, "tests-data", segmentable_only=True))
def test_subset_round_trip(folder: Path) -> None:
    _round_trip(folder)


@pytest.mark.parametrize("folder", folder_params(SHARED_MRI, "shared", segmentable_only=True))
def test_full_set_round_trip(folder: Path) -> None:
    _round_trip(folder)
