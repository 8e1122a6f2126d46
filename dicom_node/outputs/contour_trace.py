"""The RTSTRUCT's contours traced by OpenCV: each structure's mask on each slice scaled up 3 times and
traced by border following (see :func:`structure_polygons`).

Each structure is cut out of the slice-ordered label map by its bounding box; on each slice of the box its
mask keeps only the rows it has pixels on, followed by a row of background; those bands are stacked into
one tall image, scaled up and traced in one ``cv2.findContours`` call. The structures of one structure set
are traced one after the other into the same :class:`Scratch` buffers, grown to the largest one, instead of
each into fresh memory (on large images the first writes to fresh pages cost more than the writing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from dicom_node.outputs.derived import opencv

#: Each pixel becomes SCALE x SCALE sub-pixels before tracing (see :func:`structure_polygons`).
SCALE = 3


class Scratch:
    """Byte buffers that the structures of one structure set are traced in one after the other: each
    named buffer grows to the largest request made of it and is handed out again as a view."""

    def __init__(self) -> None:
        self._buffers: dict[str, npt.NDArray[np.uint8]] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A C-contiguous array of ``shape`` and ``dtype`` on the buffer ``name``, its values what the
        last user of the buffer left there."""
        size = math.prod(shape) * np.dtype(dtype).itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


def scaled_up(
    masks: npt.NDArray[np.bool_], out: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8]:
    """Masks (..., rows, columns) as the images :func:`structure_polygons` traces, written to ``out``
    (C-contiguous, uint8, (..., rows * 3, columns * 3)) where given: each pixel a 3 x 3 block of sub-pixels
    (each row of a block by OpenCV's grey-to-RGB conversion, each value written to the three channels of a
    pixel, several times faster than ``np.repeat`` of single bytes), and in each 2 x 2 saddle (two pixels
    touching only at a corner) the corner sub-pixel of the lower pixel cleared. No padding: OpenCV's
    ``findContours`` traces a pixel on the image edge as if a row or column of background lay beyond it."""
    *lead, rows, columns = masks.shape
    shape = (*lead, rows * SCALE, columns * SCALE)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"scaled_up: out is {out.dtype} {out.shape}, not a contiguous uint8 {shape}")
    if not masks.size:
        return out
    cv2 = opencv()

    flat = np.ascontiguousarray(masks).view(np.uint8).reshape(-1, columns)
    # the saddles first, in the bytes of ``out`` (9 times those of the masks) before the blocks are written
    tall_row, column = _saddles(flat, out.reshape(-1))
    # SCALE is 3: one value to the three channels of a pixel, for each of the three rows of its block
    blocks = out.reshape(-1, SCALE, columns, SCALE)
    for row in range(SCALE):
        cv2.cvtColor(flat, cv2.COLOR_GRAY2RGB, dst=blocks[:, row])
    # the blocks across two images (the masks one above the other) left out
    keep = tall_row % rows != rows - 1
    column, tall_row = column[keep], tall_row[keep]
    # (r, c) and (r+1, c+1) in, the other two out -> clear (r+1, c+1)'s top-left sub-pixel, at
    # ((r+1) * 3, (c+1) * 3); (r, c+1) and (r+1, c) in -> clear (r+1, c)'s top-right sub-pixel, at
    # ((r+1) * 3, c * 3 + 2)
    top_left = flat[tall_row, column].astype(np.bool_)
    sub_column = np.where(top_left, (column + 1) * SCALE, column * SCALE + SCALE - 1)
    out.reshape(-1, SCALE * columns)[(tall_row + 1) * SCALE, sub_column] = 0
    return out


def _saddles(
    flat: npt.NDArray[np.uint8], spare: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The rows and columns (r, c) of the 2 x 2 blocks (r, c) .. (r+1, c+1) of the 0/1 image ``flat`` whose
    diagonals differ: a != b, a != c, a == d; worked out by OpenCV's bitwise operations in ``spare``
    (at least twice the bytes of ``flat``)."""
    cv2 = opencv()

    rows, columns = flat.shape
    size = max(rows - 1, 0) * max(columns - 1, 0)
    if not size:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    saddle, other = (spare[n * size : (n + 1) * size].reshape(rows - 1, columns - 1) for n in range(2))
    a, b, c, d = flat[:-1, :-1], flat[:-1, 1:], flat[1:, :-1], flat[1:, 1:]
    cv2.bitwise_xor(a, b, dst=saddle)
    cv2.bitwise_xor(a, c, dst=other)
    cv2.bitwise_and(saddle, other, dst=saddle)
    cv2.bitwise_xor(a, d, dst=other)
    cv2.subtract(saddle, other, dst=saddle)
    # smooth masks have few saddles or none
    if not cv2.countNonZero(saddle):
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    column, row = cv2.findNonZero(saddle).reshape(-1, 2).T.astype(np.intp)
    return row, column


def padded_masks(
    ordered: npt.NDArray[Any], box: tuple[slice, ...], label: int, scratch: Scratch | None = None
) -> npt.NDArray[np.bool_]:
    """The mask of ``label`` on the slices of its bounding box ``box`` in the slice-ordered label map
    ``ordered`` (:attr:`~dicom_node.outputs.label_layout.LabelLayout.ordered`), as (slices, rows + 1,
    columns): each slice's mask followed by a row of background; on ``scratch``'s masks buffer where
    given."""
    count, rows, columns = (int(b.stop) - int(b.start) for b in box)
    shape = (count, rows + 1, columns)
    padded = np.empty(shape, dtype=np.bool_) if scratch is None else scratch.take("masks", shape, np.bool_)
    padded[:, rows] = False
    np.equal(ordered[box], label, out=padded[:, :rows])
    return padded


def _bands(
    padded: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The bands of ``padded`` (:func:`padded_masks`) that are traced: on each slice with pixels, its rows
    from the first with pixels to the one below the last (background: at worst the padding row). Returns
    the slices, each band's first row on its slice, each band's first row in the stacked bands, and the
    row of ``padded`` (slices x rows, one after the other) each row of the stacked bands is."""
    cv2 = opencv()

    count, padded_rows, columns = padded.shape
    flat = padded.reshape(-1, columns).view(np.uint8)
    per_row = cv2.reduce(flat, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).reshape(count, padded_rows) > 0
    slices = np.flatnonzero(per_row.any(axis=1))
    on = per_row[slices]
    first = on.argmax(axis=1)
    last = padded_rows - 1 - on[:, ::-1].argmax(axis=1)
    heights = last - first + 2
    starts = np.cumsum(heights) - heights
    rows = np.arange(int(heights.sum())) + np.repeat(slices * padded_rows + first - starts, heights)
    return slices, first, starts, rows


def structure_polygons(
    ordered: npt.NDArray[Any], box: tuple[slice, ...], label: int, scratch: Scratch | None = None
) -> tuple[npt.NDArray[np.intp], list[int], npt.NDArray[np.int32]]:
    """The contours of ``label`` on the slices of its bounding box ``box`` in the slice-ordered label map
    ``ordered``, slice by slice: the slice of each (counted from the box's first), its number of points,
    and all their points one after the other as (x, y) sub-pixel indices in the :func:`scaled_up` image of
    its slice of the box; traced in ``scratch``'s buffers where given.

    The slices are traced in one ``cv2.findContours`` call: their bands (:func:`_bands`: the rows the
    structure is on, followed by a row of background) scaled up and stacked into one tall image, so that no
    contour joins two slices and each slice's contours are those it has alone, in the order OpenCV gives
    them for the slice by itself (the same in any band of rows that holds the structure's pixels).

    OpenCV's border following (``cv2.findContours``, all contours: outer boundaries and holes) on the masks
    scaled up 3 times (:func:`scaled_up`): its contours run through the centres of the boundary
    sub-pixels, a third of a pixel inside the pixel edges, so that every pixel centre of a mask lies
    strictly inside the polygons and every other pixel centre strictly outside. Pixels that touch only at a
    corner are kept apart, as marching squares with 8-connected background would, so that every polygon is
    simple. A single pixel gives 4 points."""
    cv2 = opencv()

    scratch = scratch or Scratch()
    padded = padded_masks(ordered, box, label, scratch)
    columns = padded.shape[2]
    slices, first, starts, rows = _bands(padded)
    if not len(slices):
        return slices, [], np.zeros((0, 2), dtype=np.int32)
    stacked = scratch.take("bands", (len(rows), columns), np.bool_)
    np.take(padded.reshape(-1, columns), rows, axis=0, out=stacked, mode="clip")
    image = scaled_up(stacked, scratch.take("image", (len(rows) * SCALE, columns * SCALE), np.uint8))
    found, _ = cv2.findContours(image, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    kept = [contour for contour in found if len(contour) >= 3]
    if not kept:
        return np.zeros(0, dtype=np.intp), [], np.zeros((0, 2), dtype=np.int32)
    # each contour's band: the one its first point lies in; a stable sort keeps OpenCV's order in a band
    band_starts = starts * SCALE
    bands = np.searchsorted(band_starts, [int(contour[0, 0, 1]) for contour in kept], side="right") - 1
    order = np.argsort(bands, kind="stable")
    kept = [kept[n] for n in order.tolist()]
    bands = bands[order]
    lengths = [len(contour) for contour in kept]
    xy = np.concatenate(kept).reshape(-1, 2).astype(np.int32, copy=False)
    xy[:, 1] += np.repeat(first[bands] * SCALE - band_starts[bands], lengths).astype(np.int32)
    return slices[bands], lengths, xy
