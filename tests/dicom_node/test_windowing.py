"""The overlay's windowing of float32 stacks (dicom_node.outputs.windowing): the float32 path with OpenCV
gives, value for value, what the float64 arithmetic gives and what pydicom's ``apply_windowing`` gives,
over wide random ranges, at every grey level's least value and its float32 neighbours, for huge, zero,
subnormal, infinite and NaN values, for windows of odd, even and fractional centers and widths
(LINEAR and LINEAR_EXACT), and for stacks whose slices have windows of their own."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_windowing

from dicom_node.outputs import windowing
from dicom_node.outputs.derived import DerivedContext
from dicom_node.outputs.overlay import encode_overlay
from dicom_node.outputs.seg import AlgorithmInfo, SegOptions, segments_from_catalog
from dicom_node.outputs.windowing import (
    Float32Window,
    Window,
    float32_windows,
    gray_thresholds,
    linear_8bit,
    opencv_saturates,
    windowed_stack,
)
from tests.dicom_node.seg_support import volumes_of
from tests.support.paths import PD_TRA

#: NaN values through the float64 arithmetic (numpy warns; they give 0)
NAN_WARNING = "ignore:invalid value encountered in rint:RuntimeWarning"

WINDOWS = [
    Window(40, 400),  # even width
    Window(35, 401),  # odd width
    Window(600.25, 800.5),  # fractional center and width
    Window(-1000.5, 3.75, "LINEAR_EXACT"),
    Window(0.3, 1.0, "LINEAR_EXACT"),  # a width of one value
    Window(1.5, 1.25),  # LINEAR: 0.25 wide
    Window(123456.0, 130.0),  # the center 950 widths from zero: the float32 path's limit is 1000
    Window(2.5e30, 5e27, "LINEAR_EXACT"),
    Window(3e-20, 1.0, "LINEAR_EXACT"),
]

SPECIAL = np.array(
    [
        np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        3.4e38,
        -3.4e38,
        1e20,
        -1e20,
        2.5,
        -2.5,
    ],
    dtype=np.float32,
)


def pydicom_windowed(values: npt.NDArray[Any], window: Window) -> npt.NDArray[np.uint8]:
    """pydicom's windowing, rounded to 8 bits; NaN values (which it leaves NaN) as 0."""
    display = Dataset()
    display.WindowCenter, display.WindowWidth, display.VOILUTFunction = (
        window.center,
        window.width,
        window.function,
    )
    display.PhotometricInterpretation, display.BitsStored, display.PixelRepresentation = "MONOCHROME2", 8, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # infinite values
        out = np.rint(apply_windowing(values.astype(np.float64), display))
    gray: npt.NDArray[np.uint8] = np.clip(np.nan_to_num(out, nan=0.0), 0, 255).astype(np.uint8)
    return gray


def thresholds_of(window: Window) -> npt.NDArray[np.float32]:
    linear = window.linear()
    assert linear is not None
    return gray_thresholds(np.array([linear[0]]), np.array([linear[1]]))[0]


def values_for(window: Window, seed: int) -> npt.NDArray[np.float32]:
    """Random values over the window and far beyond it, every grey level's least value with its float32
    neighbours on both sides, and the special values."""
    rng = np.random.default_rng(seed)
    thresholds = thresholds_of(window)
    around = np.float32(window.center) + (rng.standard_normal(30_000) * window.width).astype(np.float32)
    wide = rng.uniform(-1, 1, 30_000) * 10.0 ** rng.uniform(-45, 38, 30_000)
    return np.concatenate(
        [
            thresholds,
            np.nextafter(thresholds, np.float32(np.inf)),
            np.nextafter(thresholds, np.float32(-np.inf)),
            around,
            wide.astype(np.float32),
            SPECIAL,
        ]
    ).astype(np.float32)


def fortran_stack(values: npt.NDArray[np.float32], slices: int) -> npt.NDArray[np.float32]:
    """``values`` spread over a Fortran-ordered (columns, rows, slices) float32 stack (as load_series holds
    one), padded with zeros to slices of more values than one block of the float32 path, not a multiple
    of it."""
    per = -(-len(values) // slices)
    columns = max(-(-per // 7), 10_001)
    flat = np.zeros(columns * 7 * slices, dtype=np.float32)
    flat[: len(values)] = values
    stack: npt.NDArray[np.float32] = flat.reshape(slices, 7, columns).T
    assert stack.flags.f_contiguous
    return stack


def float64_windowed(stack: npt.NDArray[np.float32], windows: list[Window]) -> npt.NDArray[np.uint8]:
    """The float64 arithmetic, slice by slice."""
    out = np.empty(stack.shape, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN
        for k, window in enumerate(windows):
            linear = window.linear()
            assert linear is not None
            out[:, :, k] = linear_8bit(stack[:, :, k], *linear)
    return out


def test_opencv_rounds_float32_to_8_bits_as_the_float32_path_needs() -> None:
    """The float32 path is taken with the OpenCV installed (else the tests below would test the float64
    path only)."""
    assert opencv_saturates()


#: Windows outside the float32 path, whose least values are found all the same: grey levels whose least
#: value is beyond the float32 range (+inf) or its least finite value (-3.4e38), or one float32 step,
FAR = [
    Window(0.0, 1e308, "LINEAR_EXACT"),
    Window(1e17, 2.0, "LINEAR_EXACT"),
    Window(-3e38, 2.0),
    Window(-1.7e308, 1.7e308, "LINEAR_EXACT"),  # levels' edges beyond float64: bisected from -inf..+inf
]


@pytest.mark.parametrize("window", WINDOWS + FAR, ids=[w.describe() for w in WINDOWS + FAR])
def test_gray_thresholds_are_each_levels_least_value(window: Window) -> None:
    linear = window.linear()
    assert linear is not None
    thresholds = thresholds_of(window)
    levels = np.arange(1, 256)
    assert (linear_8bit(thresholds, *linear) >= levels).all()
    with np.errstate(over="ignore"):  # below the least finite value: -inf
        below = np.nextafter(thresholds, np.float32(-np.inf))
    assert (linear_8bit(below, *linear) < levels).all()


@pytest.mark.parametrize("window", WINDOWS, ids=[w.describe() for w in WINDOWS])
def test_float32_path_gives_the_float64_and_pydicom_values(
    window: Window, monkeypatch: pytest.MonkeyPatch
) -> None:
    linear = window.linear()
    assert linear is not None
    assert float32_windows(np.array([linear[0]]), np.array([linear[1]]))[0] is not None, "float32 path taken"
    values = values_for(window, seed=len(window.describe()))
    stack = fortran_stack(values, 3)
    windows = [window] * 3
    blocks: list[int] = []
    apply = Float32Window.apply
    monkeypatch.setattr(Float32Window, "apply", lambda self, *a: blocks.append(a[0].size) or apply(self, *a))
    gray = windowed_stack(stack, windows)
    assert gray is not None
    assert sum(blocks) == stack.size, "every value windowed by the float32 path"
    expected = float64_windowed(stack, windows)
    mismatched = np.flatnonzero((gray != expected).reshape(-1, order="F"))
    assert not mismatched.size, (
        f"{mismatched.size} values, e.g. {stack.reshape(-1, order='F')[mismatched[:5]]}"
    )
    assert np.array_equal(gray, pydicom_windowed(stack, window))
    nan = np.isnan(stack)
    assert nan.any() and (gray[nan] == 0).all()  # NaN: 0, as the float64 arithmetic gives it


@pytest.mark.filterwarnings(NAN_WARNING)
def test_each_slice_is_windowed_with_its_own_window() -> None:
    """Slices with windows of their own, some of them outside the float32 path (a center farther than
    1000 widths from zero; a width below 1e-30): each slice is its values through its own window."""
    windows = [*WINDOWS, Window(5e6, 10.0), Window(1.0, 1.0 + 2.0**-52), Window(40, 400)]
    linear = [w.linear() for w in windows]
    fast = float32_windows(np.array([p[0] for p in linear if p]), np.array([p[1] for p in linear if p]))
    assert fast[-3] is None and fast[-2] is None and fast[0] is not None
    values = np.concatenate([values_for(w, seed=k) for k, w in enumerate(windows)])
    stack = fortran_stack(values, len(windows))
    gray = windowed_stack(stack, windows, np.empty(stack.shape, dtype=np.uint8, order="F"))
    assert gray is not None
    assert np.array_equal(gray, float64_windowed(stack, windows))
    for k, window in enumerate(windows):
        assert np.array_equal(gray[:, :, k], pydicom_windowed(stack[:, :, k], window)), window.describe()


@pytest.mark.filterwarnings(NAN_WARNING)
def test_without_a_saturating_opencv_the_float64_arithmetic_windows_the_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(windowing, "opencv_saturates", lambda: False)
    window = Window(40, 400)
    assert float32_windows(np.array([39.5]), np.array([399.0])) == [None]
    stack = fortran_stack(values_for(window, seed=1), 2)
    gray = windowed_stack(stack, [window, window])
    assert gray is not None and np.array_equal(gray, pydicom_windowed(stack, window))


def test_monochrome1_images_are_inverted_after_the_float32_path() -> None:
    """The overlay of a MONOCHROME1 series (its stack float32 and Fortran-ordered, as load_series holds it):
    each image is 255 minus its slice through its own window."""
    volume = volumes_of(PD_TRA)[0]
    assert volume.voxels.dtype == np.float32 and volume.voxels.flags.f_contiguous
    headers = {str(h.SOPInstanceUID): h for h in volume.source_headers}
    windows = []
    for k, ref in enumerate(volume.slice_refs):
        header = headers[ref.sop_instance_uid]
        header.PhotometricInterpretation = "MONOCHROME1"
        header.WindowCenter, header.WindowWidth = 150.5 + 3 * k, 301 + k % 2
        windows.append(Window(150.5 + 3 * k, 301 + k % 2))
    context = DerivedContext(volume, AlgorithmInfo("TotalSegmentator", "total_mr", "2.0"), SegOptions())
    overlay = encode_overlay(
        context, np.zeros(volume.shape, dtype=np.uint8), segments_from_catalog("total_mr")
    )
    rows, columns = volume.shape[1], volume.shape[0]
    for k, ds in enumerate(overlay.datasets):
        image = ds.pixel_array[:rows, :columns]
        expected = 255 - pydicom_windowed(volume.voxels[:, :, k].T, windows[k])
        assert np.array_equal(image, np.repeat(expected[:, :, None], 3, axis=2)), f"slice {k}"
