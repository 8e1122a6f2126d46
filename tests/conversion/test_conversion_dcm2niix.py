"""SegNode's volumes agree with dcm2niix (run as a subprocess) on every real series of the test data.

For each series: the same number of 3D volumes (dcm2niix's 4D files count one volume per ``t``), matched
one to one by geometry and voxel values; equal voxel values; world coordinates of the corner voxels within
0.01 mm; b-values of the matched volumes equal where dcm2niix writes a .bval file. Series SegNode rejects
are listed in ``EXPECTED_REJECTIONS`` with their reason code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conversion_reference import (
    CORNER_TOLERANCE_MM,
    EXPECTED_REJECTIONS,
    RefVolume,
    corner_distance,
    folder_params,
    index_mapping,
    run_dcm2niix,
    values_equal,
)

from conversion import NotSegmentableError, Volume, load_series
from tests.support.paths import SHARED_MRI, TEST_MRI, series_files

#: The Sunnybrook files carry UIDs with leading-zero components: pydicom warns, SegNode reads them.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")


def _check_against_dcm2niix(folder: Path, tmp_path: Path) -> None:
    files = series_files(folder)
    expected_reason = EXPECTED_REJECTIONS.get(folder.name)
    if expected_reason is not None:
        with pytest.raises(NotSegmentableError) as info:
            load_series(files)
        assert info.value.reason == expected_reason, info.value.message
        return
    volumes = load_series(files)
    refs = run_dcm2niix(folder, tmp_path / "dcm2niix")
    assert len(volumes) == len(refs), (
        f"SegNode built {len(volumes)} stacks ({[v.stack_label for v in volumes]}), "
        f"dcm2niix {len(refs)} volumes ({[(r.path.name, r.t) for r in refs]})"
    )
    unused = list(refs)
    for volume in volumes:
        match = _match(volume, unused)
        assert match is not None, f"no dcm2niix volume matches stack {volume.stack_label!r} of {folder}"
        unused.remove(match)
        assert corner_distance(volume, match) <= CORNER_TOLERANCE_MM
        if match.b_value is not None and "b_value" in volume.stack_key:
            assert float(volume.stack_key["b_value"]) == pytest.approx(match.b_value)
    assert not unused


def _match(volume: Volume, refs: list[RefVolume]) -> RefVolume | None:
    for ref in refs:
        theirs = index_mapping(volume, ref)
        if theirs is not None and values_equal(volume.voxels, theirs):
            return ref
    return None


@pytest.mark.parametrize("folder", folder_params(TEST_MRI, "tests-data"))
def test_subset_matches_dcm2niix(folder: Path, tmp_path: Path) -> None:
    _check_against_dcm2niix(folder, tmp_path)


@pytest.mark.parametrize("folder", folder_params(SHARED_MRI, "shared"))
def test_full_set_matches_dcm2niix(folder: Path, tmp_path: Path) -> None:
    _check_against_dcm2niix(folder, tmp_path)
