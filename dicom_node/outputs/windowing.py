"""8-bit display windows of the overlay series (``dicom_node.outputs.overlay``): the source image's own
window (Window Center/Width and VOI LUT Function, PS3.3 C.11.2.1.2), else the 0.5-99.5 percentile range of
the stack, applied with the arithmetic of pydicom's ``apply_windowing`` (the same values, tested against
pydicom), to a whole stack at once in its own memory order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset


def linear_8bit(
    pixels: npt.NDArray[Any],
    center: Any,
    width: Any,
    out: npt.NDArray[np.uint8] | None = None,
    temp: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.uint8]:
    """pydicom's LINEAR window arithmetic (``center`` and ``width`` as :meth:`Window.linear` gives them:
    numbers, or arrays broadcast against ``pixels``), rounded and clipped to 0..255. pydicom's two range
    tests (x <= center - width / 2 -> 0, x > center + width / 2 -> 255) are left to the clip: there the
    formula gives <= 0 and > 255 (up to rounding far below half a grey level), which clip and rint turn
    into 0 and 255 as well. Clipped before it is rounded (the same values: 0 and 255 are whole numbers and
    rounding keeps the order), the result is rounded straight into 8 bits. ``out``: where to write it,
    ``temp``: float64 memory of ``pixels``' shape for the arithmetic (else new memory)."""
    y: npt.NDArray[np.float64] = np.subtract(pixels, center, dtype=np.float64, out=temp)
    y /= width
    y += 0.5
    y *= 255.0
    np.clip(y, 0, 255, out=y)
    gray: npt.NDArray[np.uint8] = np.rint(
        y, out=np.empty(y.shape, dtype=np.uint8) if out is None else out, casting="unsafe"
    )
    return gray


#: Values windowed per block by :func:`windowed_stack` (512 KB of float64: a core's cache holds the block).
_BLOCK = 1 << 16


def windowed_stack(
    voxels: npt.NDArray[Any], windows: Sequence[Window], out: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8] | None:
    """A (columns, rows, slices) stack windowed to 8 bits, slice k with ``windows[k]``, in the stack's own
    memory order (a C-ordered stack in blocks of whole rows of slices, each slice's center and width
    broadcast along the last axis; a Fortran-ordered one, as ``load_series`` makes it, slice by slice;
    the blocks' arithmetic in one float64 buffer), so that the slices are then transposed as bytes rather
    than as modality values (or not at all); None where a window is not linear (:meth:`Window.linear`) or
    the stack is in neither order. ``out``: where to write it (the stack's shape, in its order), else new
    memory."""
    linear = [w.linear() for w in windows]
    if not voxels.size or any(p is None for p in linear):
        return None
    centers = np.array([p[0] for p in linear if p is not None], dtype=np.float64)
    widths = np.array([p[1] for p in linear if p is not None], dtype=np.float64)
    count = voxels.shape[-1]
    if out is not None and (
        out.shape != voxels.shape
        or out.dtype != np.uint8
        or not (out.flags.c_contiguous if voxels.flags.c_contiguous else out.flags.f_contiguous)
    ):
        raise ValueError(f"windowed_stack: out {out.shape} is not uint8 in the stack's shape and order")
    if voxels.flags.c_contiguous:
        gray = np.empty(voxels.shape, dtype=np.uint8) if out is None else out
        flat, rows = voxels.reshape(-1, count), gray.reshape(-1, count)
        step = max(1, _BLOCK // count)
        # one window for the whole stack (as a series mostly has): numbers, which numpy applies faster than
        # a row of them broadcast; the same arithmetic
        uniform = bool((centers == centers[0]).all() and (widths == widths[0]).all())
        center, width = (float(centers[0]), float(widths[0])) if uniform else (centers, widths)
        temp = np.empty((min(step, len(flat)), count), dtype=np.float64)
        for start in range(0, len(flat), step):
            block = flat[start : start + step]
            linear_8bit(block, center, width, rows[start : start + step], temp[: len(block)])
    elif voxels.flags.f_contiguous:
        gray = np.empty(voxels.shape, dtype=np.uint8, order="F") if out is None else out
        flat, planes = voxels.T.reshape(count, -1), gray.T.reshape(count, -1)
        size = flat.shape[1]
        temp = np.empty(min(_BLOCK, size), dtype=np.float64)
        for k in range(count):  # each slice in blocks that a core's cache holds
            for start in range(0, size, _BLOCK):
                block = flat[k, start : start + _BLOCK]
                linear_8bit(
                    block, centers[k], widths[k], planes[k, start : start + _BLOCK], temp[: len(block)]
                )
    else:
        return None
    return gray


@dataclass(frozen=True)
class Window:
    """An 8-bit display window (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: str = "LINEAR"

    def linear(self) -> tuple[float, float] | None:
        """The center and width of pydicom's LINEAR or LINEAR_EXACT arithmetic (PS3.3 C.11.2.1.2.1,
        C.11.2.1.3.2) for this window, None where it has other arithmetic (SIGMOID, a width below 1)."""
        if self.function in ("LINEAR", "LINEAR_EXACT") and self.width >= 1:
            center, width = self.center, self.width
            if self.function == "LINEAR":
                center, width = center - 0.5, width - 1
            if width > 0:
                return center, width
        return None

    def apply(self, pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Window ``pixels`` (modality values) to 0..255: LINEAR and LINEAR_EXACT with the arithmetic of
        pydicom's ``apply_windowing`` in one vectorised pass (:func:`linear_8bit`), giving the same
        values; SIGMOID with pydicom's implementation."""
        linear = self.linear()
        if linear is None:
            return self._apply_with_pydicom(pixels)
        return linear_8bit(pixels, *linear)

    def _apply_with_pydicom(self, pixels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        from pydicom.pixels.processing import apply_windowing

        ds = Dataset()
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored = 8
        ds.PixelRepresentation = 0
        ds.WindowCenter = self.center
        ds.WindowWidth = self.width
        ds.VOILUTFunction = self.function
        out = np.rint(apply_windowing(np.asarray(pixels, dtype=np.float64), ds))
        gray: npt.NDArray[np.uint8] = np.clip(out, 0, 255).astype(np.uint8)
        return gray

    def describe(self) -> str:
        return f"window center {self.center:g} width {self.width:g} ({self.function})"


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__getitem__"):
        return float(value)
    return float(value[0])


def source_window(header: Dataset) -> Window | None:
    """The source image's first window (or its frame's, for a multi-frame source), None where it has no
    usable one."""
    item = header
    shared = header.get("SharedFunctionalGroupsSequence")
    if "WindowCenter" not in header and shared and shared[0].get("FrameVOILUTSequence"):
        item = shared[0].FrameVOILUTSequence[0]
    try:
        center, width = _first(item.WindowCenter), _first(item.WindowWidth)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    if not np.isfinite(center) or not np.isfinite(width) or width < 1:
        return None
    function = str(item.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return Window(center, width, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR")


def stack_window(voxels: npt.NDArray[Any]) -> Window:
    """A window over the 0.5-99.5 percentile range of a stack (for sources without one)."""
    low, high = (float(v) for v in np.percentile(voxels[::2, ::2, :], [0.5, 99.5]))
    return Window((low + high) / 2, max(high - low, 1.0))
