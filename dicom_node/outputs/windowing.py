"""8-bit display windows of the overlay series (``dicom_node.outputs.overlay``): the source image's own
window (Window Center/Width and VOI LUT Function, PS3.3 C.11.2.1.2), else the 0.5-99.5 percentile range of
the stack, applied with the arithmetic of pydicom's ``apply_windowing`` (the same values, tested against
pydicom), to a whole stack at once in its own memory order; float32 stacks as ``load_series`` holds them
with OpenCV in float32, corrected to the same values (:class:`Float32Window`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_node.outputs.derived import opencv


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
#: Values windowed per block by :class:`Float32Window` (the block, its thresholds and its 8-bit values:
#: 576 KB).
_FLOAT32_BLOCK = 1 << 16


def windowed_stack(
    voxels: npt.NDArray[Any], windows: Sequence[Window], out: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8] | None:
    """A (columns, rows, slices) stack windowed to 8 bits, slice k with ``windows[k]``, in the stack's own
    memory order (a C-ordered stack in blocks of whole rows of slices, each slice's center and width
    broadcast along the last axis; a Fortran-ordered one, as ``load_series`` makes it, slice by slice:
    of float32 values, with :class:`Float32Window` where the window has one, else in blocks), the blocks'
    arithmetic in one float64 buffer, so that the slices are then transposed as bytes rather
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
        fast = float32_windows(centers, widths) if voxels.dtype == np.float32 else [None] * count
        most = min(_FLOAT32_BLOCK, size)
        thresholds, reached = np.empty((1, most), np.float32), np.empty((1, most), np.uint8)
        temp = np.empty(min(_BLOCK, size), dtype=np.float64)
        for k in range(count):  # each slice in blocks that a core's cache holds
            if (window := fast[k]) is not None:
                for start in range(0, size, _FLOAT32_BLOCK):
                    part = flat[k, start : start + _FLOAT32_BLOCK].reshape(1, -1)
                    n = part.shape[1]
                    out_part = planes[k, start : start + n].reshape(1, -1)
                    window.apply(part, out_part, thresholds[:, :n], reached[:, :n])
                continue
            for start in range(0, size, _BLOCK):
                block = flat[k, start : start + _BLOCK]
                linear_8bit(
                    block, centers[k], widths[k], planes[k, start : start + _BLOCK], temp[: len(block)]
                )
    else:
        return None
    return gray


#: Windows whose center lies within this many widths of zero get the float32 path (:class:`Float32Window`):
#: there OpenCV's float32 arithmetic stays within a quarter of a grey level of the exact value.
_FAST_CENTER_WIDTHS = 1000.0
#: The float32 path's tables by (center, width) of :func:`linear_8bit` (None: a window without one).
_FAST_CACHE: dict[tuple[float, float], Float32Window | None] = {}


def _float32_keys(values: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Integers in the order of the float32 ``values`` (not NaN; -0 just below +0)."""
    bits = values.view(np.int32).astype(np.int64)
    keys: npt.NDArray[np.int64] = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return keys


def _float32_of_keys(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    bits = np.where(keys < 0, keys ^ 0x7FFFFFFF, keys).astype(np.int32)
    values: npt.NDArray[np.float32] = bits.view(np.float32)
    return values


def gray_thresholds(
    centers: npt.NDArray[np.float64], widths: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """For each window (``centers[i]``, ``widths[i]`` as :meth:`Window.linear` gives them) and each grey
    level k = 1..255, the smallest float32 value that :func:`linear_8bit` takes to k or above (column
    k - 1). :func:`linear_8bit` is non-decreasing in its input (each of its steps is), takes -inf to 0 and
    +inf to 255, so each exists, and a bisection over the float32 values in their order that evaluates
    :func:`linear_8bit` itself finds it: between the float32 values around the level's edge in exact
    arithmetic (c + w * ((k - 1/2) / 255 - 1/2), a few values apart) where they bracket it, else between
    -inf and +inf (32 rounds)."""
    levels = np.tile(np.arange(1, 256), len(centers))
    center, width = np.repeat(centers, 255), np.repeat(widths, 255)
    ends = _float32_keys(np.array([-np.inf, np.inf], dtype=np.float32))
    with np.errstate(all="ignore"):  # edges beyond float32 or float64 (or NaN): bracketed or not, below
        edge = center + width * ((levels - 0.5) / 255 - 0.5)
        margin = 1e-9 * (np.abs(center) + width)
        low = np.clip(_float32_keys((edge - margin).astype(np.float32)) - 1, *ends)
        high = np.clip(_float32_keys((edge + margin).astype(np.float32)) + 1, *ends)
    bracketed = (linear_8bit(_float32_of_keys(low), center, width) < levels) & (
        linear_8bit(_float32_of_keys(high), center, width) >= levels
    )
    low, high = np.where(bracketed, low, ends[0]), np.where(bracketed, high, ends[1])
    active = np.flatnonzero(high - low > 1)
    while active.size:
        below, above = low[active], high[active]
        middle = below + (above - below) // 2
        up = linear_8bit(_float32_of_keys(middle), center[active], width[active]) >= levels[active]
        high[active], low[active] = np.where(up, middle, above), np.where(up, below, middle)
        active = active[high[active] - low[active] > 1]
    return _float32_of_keys(high).reshape(len(centers), 255)


@dataclass(frozen=True)
class Float32Window:
    """:func:`linear_8bit` of one window for float32 values, the same values from float32 arithmetic with
    OpenCV. r = OpenCV's 8-bit rounding (to nearest, saturating) of v = ``alpha * x + alpha * x + gamma``
    = 128 + 255 * (c - x) / w = 255.5 - y, y being the exact formula's value before it is rounded: in
    float32, with the center within ``_FAST_CENTER_WIDTHS`` widths of zero, v is within a quarter of its
    exact value where y is within 0..255 (its terms are below 2**18 there, each float32 step within
    2**-24 of them), and beyond, where y and v only grow apart, it rounds to 0 or 255 as y does. So
    255 - r is the exact grey level g or g - 1 (255 - v lies within (y - 3/4, y - 1/4)), and one
    comparison with the least value of grey level 256 - r (``table[r]``, from :func:`gray_thresholds`;
    NaN for r = 0, where 255 - r is 255 already) adds the missing 1. NaN values: OpenCV rounds them to
    255, 255 - r = 0 and no comparison holds: 0, as :func:`linear_8bit` gives them."""

    table: npt.NDArray[np.float32]
    alpha: float
    gamma: float

    def apply(
        self,
        values: npt.NDArray[np.float32],
        out: npt.NDArray[np.uint8],
        thresholds: npt.NDArray[np.float32],
        reached: npt.NDArray[np.uint8],
    ) -> None:
        """Window ``values`` (1 x n float32) into ``out`` (1 x n uint8); ``thresholds`` and ``reached``
        are scratch memory of that shape, float32 and uint8."""
        cv2 = opencv()
        cv2.addWeighted(values, self.alpha, values, self.alpha, self.gamma, dst=out, dtype=cv2.CV_8U)
        cv2.LUT(out, self.table, dst=thresholds)
        cv2.compare(values, thresholds, cv2.CMP_GE, dst=reached)
        np.add(out, reached, out=out)  # r - 1 where the threshold is reached (255 is -1 modulo 256)
        np.invert(out, out=out)  # 255 - r


def float32_windows(
    centers: npt.NDArray[np.float64], widths: npt.NDArray[np.float64]
) -> list[Float32Window | None]:
    """The float32 path of each window (``centers[i]``, ``widths[i]`` as :meth:`Window.linear` gives
    them), None where it has none: a center farther than ``_FAST_CENTER_WIDTHS`` widths from zero, a width
    outside 1e-30..1e30, or an OpenCV whose 8-bit rounding of float32 does not saturate so
    (:func:`opencv_saturates`)."""
    pairs = [(float(c), float(w)) for c, w in zip(centers, widths, strict=True)]
    if not opencv_saturates():
        return [None] * len(pairs)
    if len(_FAST_CACHE) > 4096:
        _FAST_CACHE.clear()
    new = sorted(
        {
            p
            for p in pairs
            if p not in _FAST_CACHE and 1e-30 <= p[1] <= 1e30 and abs(p[0]) <= _FAST_CENTER_WIDTHS * p[1]
        }
    )
    if new:
        found = gray_thresholds(np.array([c for c, _ in new]), np.array([w for _, w in new]))
        for (center, width), row in zip(new, found, strict=True):
            table = np.concatenate([np.array([np.nan], np.float32), row[::-1]])
            _FAST_CACHE[center, width] = Float32Window(table, -127.5 / width, 128 + 255 * center / width)
    return [_FAST_CACHE.get(p) for p in pairs]


@cache
def opencv_saturates() -> bool:
    """Whether OpenCV's rounding of float32 to 8 bits in ``addWeighted`` rounds to nearest and saturates,
    NaN and +inf to 255 and -inf to 0 (OpenCV 5 does), as :class:`Float32Window` needs."""
    special = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 3e9, -3e9, 0.0, -0.0])
    values = np.concatenate([special, np.arange(-2.49, 258, 0.5)]).astype(np.float32).reshape(1, -1)
    expected = np.where(np.isnan(values), 255, np.clip(np.rint(np.nan_to_num(values)), 0, 255))
    cv2 = opencv()
    got = cv2.addWeighted(values, 0.5, values, 0.5, 0.0, dtype=cv2.CV_8U)
    return bool(np.array_equal(got, expected))


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
