"""The tracing of the RTSTRUCT's contours (dicom_node.outputs.contour_trace): the scaled-up images (3 x 3
blocks, saddle corners cleared), written into a buffer whatever it held before; each slice's contours
traced in the stacked bands of rows are those OpenCV gives for the slice by itself, in the same order;
structures traced one after the other in the same scratch buffers (a smaller one after a bigger one,
stale data in the buffers) give the contours each gives in fresh arrays."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from dicom_node.outputs.contour_trace import Scratch, scaled_up, structure_polygons


@pytest.mark.parametrize("layout", ["3-D", "2-D", "Fortran", "a view", "one row", "one column", "empty"])
def test_scaled_up_masks_are_3_x_3_blocks_with_saddle_corners_cleared(layout: str) -> None:
    """Each pixel a 3 x 3 block; in each 2 x 2 block whose pixels touch only at a corner, the lower
    pixel's sub-pixel at that corner cleared (checked block by block; the images are processed one above
    the other, and no block spans two of them)."""
    masks = np.random.default_rng(3).random((4, 13, 17)) < 0.45
    masks = {
        "3-D": masks,
        "2-D": masks[1],
        "Fortran": np.asfortranarray(masks),
        "a view": masks[:, 2:11, 1:],
        "one row": masks[:, 5:6],
        "one column": masks[:, :, 7:8],
        "empty": masks[:, :0],
    }[layout]
    expected = np.kron(masks, np.ones((3, 3), dtype=np.uint8)).astype(np.uint8)
    images = int(np.prod(masks.shape[:-2]))
    pixels, sub = masks.reshape(images, *masks.shape[-2:]), expected.reshape(images, *expected.shape[-2:])
    cleared = 0
    for n, r, c in np.ndindex(len(pixels), max(0, pixels.shape[1] - 1), max(0, pixels.shape[2] - 1)):
        block = pixels[n, r : r + 2, c : c + 2]
        if block[0, 0] == block[1, 1] and block[0, 1] == block[1, 0] and block[0, 0] != block[0, 1]:
            sub[n, 3 * r + 3, 3 * c + 3 if block[0, 0] else 3 * c + 2] = 0
            cleared += 1
    assert cleared > 0 or layout in ("one row", "one column", "empty")
    up = scaled_up(masks)
    assert up.dtype == np.uint8 and up.shape == expected.shape
    assert np.array_equal(up, expected)
    # written into a buffer holding other values: every sub-pixel written
    for stale in (0, 1, 255):
        out = np.full(expected.shape, stale, dtype=np.uint8)
        assert scaled_up(masks, out) is out
        assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "out",
    [np.zeros((12, 15), dtype=np.uint8), np.zeros((12, 18), dtype=np.int16), np.zeros((18, 12), np.uint8).T],
    ids=["shape", "dtype", "not contiguous"],
)
def test_scaled_up_refuses_an_output_it_cannot_fill(out: npt.NDArray[Any]) -> None:
    with pytest.raises(ValueError, match=r"scaled_up: out is .* not a contiguous uint8 \(12, 18\)"):
        scaled_up(np.ones((4, 6), dtype=np.bool_), out)


def ragged_map(shape: tuple[int, int, int], seed: int) -> npt.NDArray[np.uint8]:
    """A slice-ordered map (slices, rows, columns) of labels 1..3 in random ragged patches: holes, single
    pixels, pixels touching at a corner, slices without a label between slices with it, labels on the
    first and last rows and columns."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape)
    out = np.zeros(shape, dtype=np.uint8)
    out[noise < 0.5] = 1
    out[noise < 0.2] = 2
    out[noise < 0.05] = 3
    out[:, :, : shape[2] // 3] = np.where(rng.random((shape[0], shape[1], shape[2] // 3)) < 0.3, 2, 0)
    out[shape[0] // 2] = np.where(out[shape[0] // 2] == 1, 0, out[shape[0] // 2])  # label 1 absent
    out[1, :, :] = 0
    out[1, 2, 3] = 1  # one pixel of label 1 on its slice
    return out


def box_of(ordered: npt.NDArray[np.uint8], label: int) -> tuple[slice, ...]:
    from scipy import ndimage

    box = ndimage.find_objects(ordered, max_label=label)[label - 1]
    assert box is not None
    return tuple(box)


def traced_slice_by_slice(
    ordered: npt.NDArray[np.uint8], box: tuple[slice, ...], label: int
) -> list[tuple[int, list[list[int]]]]:
    """Each slice of the box traced by itself: its mask, scaled up, in one ``cv2.findContours`` call."""
    out = []
    for k, plane in enumerate(ordered[box]):
        found, _ = cv2.findContours(scaled_up(plane == label), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        out += [(k, contour.reshape(-1, 2).tolist()) for contour in found if len(contour) >= 3]
    return out


def as_list(traced: tuple[npt.NDArray[np.intp], list[int], npt.NDArray[np.int32]]) -> list[Any]:
    slices, lengths, xy = traced
    ends = np.cumsum(lengths).tolist()
    return [
        (int(k), xy[end - length : end].tolist())
        for k, length, end in zip(slices.tolist(), lengths, ends, strict=True)
    ]


@pytest.mark.parametrize("label", [1, 2, 3])
def test_contours_in_bands_are_those_of_each_slice_by_itself(label: int) -> None:
    ordered = ragged_map((7, 23, 19), seed=label)
    box = box_of(ordered, label)
    expected = traced_slice_by_slice(ordered, box, label)
    if label == 1:  # on slices 0 and 2 but not on slice 3 of its box, and on slice 1 a single pixel
        assert {0, 1, 2} <= {k for k, _ in expected} and 3 not in {k for k, _ in expected}
    assert as_list(structure_polygons(ordered, box, label)) == expected


def test_structures_traced_in_one_scratch_give_their_contours_in_fresh_arrays() -> None:
    """A big structure, then smaller ones (fewer slices, rows and columns: the buffers hold the big one's
    data beyond them), then a bigger one again (the buffers grow), and the buffers filled with ones and
    with zeros before a structure is traced."""
    ordered = ragged_map((9, 41, 37), seed=7)
    ordered[2:5, 30:33, 5:8] = 4  # a small block
    ordered[6, 20, 20] = 5  # a single pixel
    bigger = ragged_map((12, 50, 45), seed=8)
    scratch = Scratch()
    for labels_of, labels in ((ordered, (1, 4, 5, 3, 2)), (bigger, (1, 2)), (ordered, (5, 2))):
        for label in labels:
            box = box_of(labels_of, label)
            fresh = as_list(structure_polygons(labels_of, box, label))
            assert as_list(structure_polygons(labels_of, box, label, scratch)) == fresh
    for fill in (1, 0):
        for name in ("masks", "bands", "image"):
            scratch.take(name, (1 << 20,), np.uint8).fill(fill)
        for label in (4, 1):
            box = box_of(ordered, label)
            assert as_list(structure_polygons(ordered, box, label, scratch)) == as_list(
                structure_polygons(ordered, box, label)
            )


def test_scratch_buffers_grow_to_the_largest_request_and_are_shared() -> None:
    scratch = Scratch()
    first = scratch.take("image", (4, 5), np.uint8)
    first.fill(9)
    again = scratch.take("image", (2, 3), np.uint8)
    assert np.shares_memory(first, again) and again.flags.c_contiguous and np.all(again == 9)
    grown = scratch.take("image", (6, 7), np.uint8)
    assert grown.shape == (6, 7) and not np.shares_memory(grown, first)
    other = scratch.take("masks", (2, 3), np.bool_)
    assert other.dtype == np.bool_ and not np.shares_memory(other, grown)
