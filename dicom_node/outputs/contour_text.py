"""The Contour Data of the RT Structure Set: traced points as patient coordinates (LPS, mm) through the
Volume affine, written as DS text with 0.001 mm resolution.

A point is given by its sub-pixel column and row indices in the 3 x 3 scaled-up images the contours are
traced on (:func:`dicom_node.outputs.contour_trace.scaled_up`, counted from the first column and row of the
stack: the pixel column is ``(sub-pixel column - 1) / 3``) and its slice. Its coordinate along each patient
axis is ``((a0 * column + a1 * row) + a2 * slice) + a3`` with that axis' row of the affine, in numpy's
element-wise arithmetic (the same for every point).

Where each patient axis follows one stack axis alone (the other two entries of its row of the affine are
zero: axial, sagittal and coronal stacks), the coordinate along that axis takes one value per sub-pixel
index of that stack axis: each of those values is formatted once, and a point's text is put together from
the three texts by their indices (numpy takes them, ``str.join`` writes each contour). The terms left out
are zeros, so the values and texts are those of the formula above (tested against it). Any other stack (an
oblique one) has each value formatted as the formula gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: Each pixel is SCALE x SCALE sub-pixels in the traced images.
_SCALE = 3


def _text(value: float) -> str:
    """One DS value with 0.001 mm resolution (no negative zero)."""
    return f"{value:.3f}".replace("-0.000", "0.000")


class ContourText:
    """The DS text of contour points on the stack of one Volume (``affine``: its 4 x 4 affine, ``shape``:
    columns, rows, slices)."""

    def __init__(self, affine: npt.NDArray[np.float64], shape: Sequence[int], *, lookup: bool = True) -> None:
        columns, rows, count = (int(n) for n in shape)
        self._affine = np.asarray(affine, dtype=np.float64)
        # the stack axis each patient axis follows alone, where every one follows one (``lookup=False``: each
        # value formatted as the formula gives it, which the tables are tested against)
        follows = [np.flatnonzero(self._affine[axis, :3]) for axis in range(3)]
        self._axes: list[int] | None = None
        self._tables: list[npt.NDArray[np.object_]] = []
        if lookup and all(len(f) == 1 for f in follows):
            domains = (self._pixels(np.arange(_SCALE * columns)), self._pixels(np.arange(_SCALE * rows)))
            self._axes = [int(f[0]) for f in follows]
            for axis, index in enumerate(self._axes):
                domain = domains[index] if index < 2 else np.arange(count, dtype=np.float64)
                values = self._affine[axis, index] * domain + self._affine[axis, 3]
                self._tables.append(np.array([_text(v) for v in values.tolist()], dtype=object))

    @property
    def by_lookup(self) -> bool:
        """Whether the texts are looked up (each patient axis follows one stack axis alone)."""
        return self._axes is not None

    @staticmethod
    def _pixels(sub_pixels: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
        """Pixel coordinates of sub-pixel indices (the centre sub-pixel of a pixel at the pixel's index)."""
        pixels: npt.NDArray[np.float64] = (sub_pixels - (_SCALE - 1) // 2) / _SCALE
        return pixels

    def _values(
        self, columns: npt.NDArray[np.integer], rows: npt.NDArray[np.integer], slices: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.float64]:
        """The (points, 3) patient coordinates of the formula in the module's description."""
        i, j, k = self._pixels(columns), self._pixels(rows), slices.astype(np.float64)
        values = np.empty((len(i), 3), dtype=np.float64)
        for axis in range(3):
            a = self._affine[axis]
            values[:, axis] = ((a[0] * i + a[1] * j) + a[2] * k) + a[3]
        return values

    def contours(
        self,
        columns: npt.NDArray[np.integer],
        rows: npt.NDArray[np.integer],
        slices: npt.NDArray[np.integer],
        lengths: Sequence[int],
    ) -> list[bytes]:
        """The Contour Data values of consecutive contours of ``lengths`` points: the points' sub-pixel
        column and row indices in the stack and their slices, one after the other."""
        out: list[bytes] = []
        end = 0
        if self._axes is None:
            flat = self._values(columns, rows, slices).ravel().tolist()
            for length in lengths:
                start, end = end, end + 3 * length
                out.append(
                    ("\\%.3f" * length * 3 % tuple(flat[start:end]))[1:].replace("-0.000", "0.000").encode()
                )
            return out
        by_index = (columns, rows, slices)
        texts = np.empty((len(columns), 3), dtype=object)
        for axis, index in enumerate(self._axes):
            texts[:, axis] = self._tables[axis][by_index[index]]
        words = texts.ravel().tolist()
        for length in lengths:
            start, end = end, end + 3 * length
            out.append("\\".join(words[start:end]).encode("ascii"))
        return out
