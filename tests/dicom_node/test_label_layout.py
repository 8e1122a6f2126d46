"""The label map of a stack in slice order with its counts and boxes (dicom_node.outputs.label_layout),
made once for the overlay, the RTSTRUCT and the volumetry: the slice-ordered map is numpy's transpose, the
counts numpy's bincount, the boxes scipy's find_objects, the labels on the border those found on the six
faces, the slices of a label those its mask is on; the volumetry, overlay and RTSTRUCT made with it are
those made without it; a layout of another map's shape is refused naming the series."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from dicom_node.outputs import volumetry
from dicom_node.outputs.derived import DerivedContext, DerivedEncodingError
from dicom_node.outputs.label_layout import label_layout
from dicom_node.outputs.overlay import encode_overlay
from dicom_node.outputs.rtstruct import encode_rtstruct
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, segments_from_catalog
from tests.dicom_node.seg_support import synthetic_label_map, volumes_of
from tests.support.paths import T2_SAG

ALGORITHM = AlgorithmInfo("TotalSegmentator", "total_mr", "2.0")
SEGMENTS = segments_from_catalog("total_mr")
NAMES = volumetry.catalog_names("total_mr")


def boxes_map(shape: tuple[int, int, int] = (37, 29, 11)) -> npt.NDArray[np.uint8]:
    """Random boxes of labels 1..11, one label on opposite corners, one on an edge voxel, 12 and 13
    absent, and a label 255 inside."""
    rng = np.random.default_rng(5)
    label_map = np.zeros(shape, dtype=np.uint8)
    for label in range(1, 12):
        lo = rng.integers(0, shape)
        hi = np.minimum(lo + rng.integers(1, 9, 3), shape)
        label_map[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = label
    label_map[0, shape[1] // 2, shape[2] // 2] = label_map[-1, -1, -1] = 14
    label_map[shape[0] // 2, 0, 0] = 15
    label_map[2:4, shape[1] // 2, shape[2] // 2 :] = 255
    return label_map


MAPS: dict[str, Any] = {
    "C uint8": lambda: boxes_map(),
    "Fortran uint8": lambda: np.asfortranarray(boxes_map()),
    "C uint16": lambda: boxes_map().astype(np.uint16),
    "C int64": lambda: boxes_map().astype(np.int64),
    "one slice": lambda: boxes_map((12, 9, 1)),
    "inside only": lambda: np.pad(boxes_map((10, 8, 6))[1:-1, 1:-1, 1:-1], 2),
    "background only": lambda: np.zeros((6, 5, 4), dtype=np.uint8),
    "no slices": lambda: np.zeros((6, 5, 0), dtype=np.uint8),
}


@pytest.mark.parametrize("kind", list(MAPS))
def test_the_layout_is_what_numpy_and_scipy_give(kind: str) -> None:
    label_map = MAPS[kind]()
    layout = label_layout(label_map)
    ordered = label_map.transpose(2, 1, 0)
    assert layout.shape == label_map.shape
    assert layout.ordered.flags.c_contiguous and np.array_equal(layout.ordered, ordered)
    expected = np.bincount(np.ravel(label_map)) if label_map.size else np.zeros(1, dtype=np.intp)
    assert np.array_equal(layout.counts, expected)
    last = len(expected) - 1
    found = list(ndimage.find_objects(np.ascontiguousarray(ordered), max_label=last)) if last else []
    assert list(layout.boxes) == found
    assert layout.boxes_up_to(last + 3) == found + [None] * 3
    faces = volumetry.border_labels(label_map) if label_map.size else set()
    assert layout.on_border() == faces


def test_a_map_without_three_axes_is_refused() -> None:
    with pytest.raises(DerivedEncodingError, match=r"a label map has 3 axes, not 2 \(shape \(4, 5\)\)"):
        label_layout(np.zeros((4, 5), dtype=np.uint8))


@pytest.fixture(scope="module")
def stack() -> tuple[Any, npt.NDArray[np.uint8]]:
    volume = volumes_of(T2_SAG)[0]
    label_map = synthetic_label_map(volume.shape, [1, 2, 3, 5, 17])
    label_map[0, :, 2] = 3  # on a face
    return volume, label_map


def test_the_volumetry_with_the_layout_is_the_volumetry_without(stack: tuple[Any, Any]) -> None:
    volume, label_map = stack
    alone = volumetry.measure(volume, label_map, "total_mr", NAMES)
    shared = volumetry.measure(volume, label_map, "total_mr", NAMES, label_layout(label_map))
    assert shared == alone
    assert [s.touches_border for s in shared.structures].count(True) >= 1


def test_the_overlay_and_rtstruct_with_the_layout_are_those_without(stack: tuple[Any, Any]) -> None:
    volume, label_map = stack
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    layout = label_layout(label_map)
    counted = volumetry.measure(volume, label_map, "total_mr", NAMES, layout).labels
    alone = encode_overlay(context, label_map, SEGMENTS)
    shared = encode_overlay(context, label_map, SEGMENTS, counted, layout)
    assert [ds.PixelData for ds in shared.datasets] == [ds.PixelData for ds in alone.datasets]
    rt_alone = encode_rtstruct(context, label_map, SEGMENTS).dataset
    rt_shared = encode_rtstruct(context, label_map, SEGMENTS, counted, layout).dataset
    raw = [item.get_item(0x30060040).value for item in rt_shared.ROIContourSequence]
    assert raw == [item.get_item(0x30060040).value for item in rt_alone.ROIContourSequence]
    assert len(raw) == 5 and all(raw)


def test_a_layout_of_another_map_is_refused_naming_the_series(stack: tuple[Any, Any]) -> None:
    volume, label_map = stack
    context = DerivedContext(volume, ALGORITHM, SegOptions())
    other = label_layout(label_map[:, :, :-1])
    series = volume.series_instance_uid
    message = rf"series {series}.*the label layout is of a map of shape .* the label map {label_map.shape}"
    message = message.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(DerivedEncodingError, match=message):
        volumetry.measure(volume, label_map, "total_mr", NAMES, other)
    with pytest.raises(DerivedEncodingError, match=message):
        encode_overlay(context, label_map, SEGMENTS, None, other)
    with pytest.raises(DerivedEncodingError, match=message):
        encode_rtstruct(context, label_map, SEGMENTS, None, other)
