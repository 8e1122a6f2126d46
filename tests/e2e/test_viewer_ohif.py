"""SegNode's DICOM-SEG in a real viewer: the OHIF Viewer (npm ``@ohif/app``) in headless Chromium, reading a
real Orthanc through its DICOMweb plugin.

Three source series of one study (axial, sagittal and coronal-oblique prostate MRI from tests/data) and SEGs
that SegNode's encoder made from label maps of known geometry are stored in Orthanc. For each SEG the test
opens the study in OHIF as a user would, double-clicks the SEG's thumbnail and confirms loading it, scrolls
to a source image and takes a screenshot. The coloured overlay pixels of the screenshot must lie where the
label map projects through the viewer's own image transform (tolerance in ``viewer_projection``: one voxel
plus one pixel from the boundary, at most 0.5 % of the area misplaced), in the catalog colours. The same
check rejects a SEG made from the mirrored label map and one shifted by a few voxels: both are in the study
too and must fail it.

Screenshots (raw and with the expected boundary drawn in yellow) are written to ``tmp/pytest/viewer/`` of
the repository (or ``$SEGNODE_TEST_ARTIFACTS/viewer``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from viewer_projection import (
    canvas_pixels,
    check_picture,
    colour_agreement,
    compare,
    image_correlation,
    overlay_mask,
    project,
    shown_on_page,
)
from viewer_support import OhifPage, enable_dicomweb, require_viewer_peers, viewer_browser, viewer_server

from conversion import load_series
from conversion.volume import Volume
from dicom_node.outputs.seg import (
    AlgorithmInfo,
    SegOptions,
    encode_seg,
    segments_from_catalog,
)
from tests.support.orthanc import Orthanc
from tests.support.paths import PD_TRA, ROOT, T2_COR, T2_SAG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERIES = {"axial": PD_TRA, "sagittal": T2_SAG, "oblique": T2_COR}
#: total_mr labels with clearly different catalog colours: prostate (green), urinary bladder (blue), left
#: common iliac artery (red).
PROSTATE, BLADDER, ILIAC = 17, 16, 26
ARTIFACTS = Path(os.environ.get("SEGNODE_TEST_ARTIFACTS", ROOT / "tmp" / "pytest")) / "viewer"


def crafted_label_map(shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """Three structures of known, asymmetric geometry on most slices: an L, a block, and a disc whose
    centre moves by 3 % of the columns from slice to slice (so that a SEG with its slices mixed up shows
    it in the wrong place)."""
    ni, nj, nk = shape
    out = np.zeros(shape, dtype=np.uint8)
    k0, k1 = int(0.2 * nk), int(0.85 * nk) + 1
    i, j = np.mgrid[0:ni, 0:nj]
    ell = ((i >= 0.18 * ni) & (i < 0.58 * ni) & (j >= 0.30 * nj) & (j < 0.44 * nj)) | (
        (i >= 0.18 * ni) & (i < 0.30 * ni) & (j >= 0.30 * nj) & (j < 0.72 * nj)
    )
    block = (i >= 0.72 * ni) & (i < 0.90 * ni) & (j >= 0.12 * nj) & (j < 0.26 * nj)
    out[..., k0:k1][ell] = PROSTATE
    out[..., k0 + 1 : k1][block] = ILIAC
    for k in range(k0, k1):
        centre = 0.68 + 0.03 * (k - nk // 2)
        disc = (i - centre * ni) ** 2 + (j - 0.66 * nj) ** 2 < (0.13 * min(ni, nj)) ** 2
        out[..., k][disc] = BLADDER
    return out


@dataclass(frozen=True)
class Case:
    name: str
    series: str
    #: How the label map encoded into this SEG differs from the true one (``None``: it is the true one).
    damage: str | None


CASES = [
    Case("axial", "axial", None),
    Case("sagittal", "sagittal", None),
    Case("oblique", "oblique", None),
    Case("axial-mirrored", "axial", "mirrored"),
    Case("axial-shifted", "axial", "shifted"),
]


def damaged(label_map: npt.NDArray[np.uint8], damage: str | None) -> npt.NDArray[np.uint8]:
    if damage is None:
        return label_map
    if damage == "mirrored":  # left-right: the column axis reversed
        return np.ascontiguousarray(label_map[::-1])
    if damage == "shifted":  # 3 columns and 2 rows
        return np.roll(label_map, (3, 2), axis=(0, 1))
    raise ValueError(damage)


@dataclass
class Viewer:
    page: OhifPage
    study_uid: str
    volumes: dict[str, Volume]
    truths: dict[str, npt.NDArray[np.uint8]]
    #: case name -> SEG Series Instance UID
    segs: dict[str, str]


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    require_viewer_peers()
    tmp = tmp_path_factory.mktemp("viewer")
    volumes = {name: load_series(sorted(folder.glob("*.dcm")))[0] for name, folder in SERIES.items()}
    truths = {name: crafted_label_map(v.shape) for name, v in volumes.items()}
    segments = segments_from_catalog("total_mr")
    seg_files, segs = [], {}
    for case in CASES:
        parameters = {"test_variant": case.damage} if case.damage else {}
        algorithm = AlgorithmInfo("TotalSegmentator", "total_mr", "test", parameters)
        label_map = damaged(truths[case.series], case.damage)
        description = "{algorithm} {task} SEG" + (f" {case.damage} (test)" if case.damage else "")
        options = SegOptions(series_description=description)
        encoded = encode_seg(volumes[case.series], label_map, segments, algorithm, options)
        path = tmp / f"{case.name}.dcm"
        encoded.dataset.save_as(path, enforce_file_format=True)
        seg_files.append(path)
        segs[case.name] = encoded.series_instance_uid
    studies = {v.study_instance_uid for v in volumes.values()}
    assert len(studies) == 1, "the three source series are of one study"
    orthanc = Orthanc(tmp / "orthanc", {})
    enable_dicomweb(orthanc)
    orthanc.start()
    try:
        for folder in SERIES.values():
            orthanc.upload(sorted(folder.glob("*.dcm")))
        for path in seg_files:
            orthanc.upload([path])
        with viewer_server(orthanc) as url, viewer_browser(tmp / "chromium-profile") as driver:
            yield Viewer(OhifPage(driver, url), studies.pop(), volumes, truths, segs)
    finally:
        orthanc.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_ohif_shows_the_seg_where_the_label_map_projects(viewer: Viewer, case: Case) -> None:
    volume, truth = viewer.volumes[case.series], viewer.truths[case.series]
    series_uids = {v.series_instance_uid for v in viewer.volumes.values()} | set(viewer.segs.values())
    display_sets = viewer.page.open_study(viewer.study_uid, series_uids)
    viewer.page.load_seg(display_sets[viewer.segs[case.name]])
    k = volume.shape[2] // 2
    canvas = viewer.page.show_instance(volume.slice_refs[k].sop_instance_uid)

    crop = canvas_pixels(viewer.page.canvas_png, canvas)
    projection = project(volume, truth, k, canvas)
    comparison = compare(projection, overlay_mask(crop))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{case.name}-page.png").write_bytes(viewer.page.screenshot)
    Image.fromarray(crop).save(ARTIFACTS / f"{case.name}.png")
    Image.fromarray(check_picture(crop, projection)).save(ARTIFACTS / f"{case.name}-expected-boundary.png")
    correlation = image_correlation(crop, projection)
    summary = {"case": case.name, "comparison": str(comparison), "image_correlation": correlation}
    (ARTIFACTS / f"{case.name}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

    # The canvas analysed is what the page shows; the viewer shows source slice k, and the transform it
    # reports is the one it drew the image with.
    assert shown_on_page(viewer.page.screenshot, canvas, crop) > 0.95
    assert projection.slice_offset < 0.05, f"the viewport shows another plane ({projection.slice_offset})"
    assert correlation > 0.9, f"screen and source pixels disagree (r = {correlation:.3f})"
    if case.damage is None:
        assert comparison.matches, f"{case.name}: the SEG is not where the label map projects: {comparison}"
        assert comparison.dice > 0.9, comparison
        segments = segments_from_catalog("total_mr")
        for label in (PROSTATE, BLADDER, ILIAC):
            agreement = colour_agreement(crop, projection, label, segments[label].rgb)
            assert agreement > 0.9, f"{segments[label].name} not in its catalog colour ({agreement:.2f})"
    else:
        assert not comparison.matches, f"{case.name}: a {case.damage} SEG passed the check: {comparison}"
