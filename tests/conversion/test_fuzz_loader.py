"""Property-based fuzzing of ``conversion.load_series`` on mutated real series.

Whatever is done to the headers (orientation, positions, spacing, pixel attributes, pixel data, series
membership) or to the bytes of the files, ``load_series`` either returns volumes that keep the
:class:`~conversion.Volume` contract or raises :class:`~conversion.NotSegmentableError` with one of the
documented reason codes and a message; never another exception. Bounded: a few hundred examples, about
half a minute on a laptop core.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from conversion import NotSegmentableError, Reason, Volume, load_series
from tests.support.paths import PD_TRA, TEST_MRI

#: 16 transverse 3D PD slices, 128 x 128, Siemens, Explicit VR Little Endian (tests/data/mri/README.md).
PD = PD_TRA
#: Enhanced MR Image Storage, 4 volumes in one multi-frame instance, Siemens XA10.
ENHANCED = TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol"
REASONS = {r.value for r in Reason}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _load(folder: Path) -> list[Dataset]:
    files = sorted(folder.glob("*.dcm"))
    assert files, f"no DICOM files in {folder}"
    return [pydicom.dcmread(f) for f in files]


PD_SERIES = _load(PD)
PD_BYTES = [f.read_bytes() for f in sorted(PD.glob("*.dcm"))]
ENHANCED_SERIES = _load(ENHANCED)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
any_float = st.one_of(
    finite,
    st.sampled_from([0.0, -0.0, 1e-12, -1.0, 1e308, math.nan, math.inf, -math.inf]),
)
vector3 = st.lists(any_float, min_size=3, max_size=3)
vector6 = st.lists(any_float, min_size=6, max_size=6)
odd_length = st.lists(finite, min_size=0, max_size=8)
small_int = st.integers(min_value=-2, max_value=70000)


def _set(keyword: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Callable[[Dataset], None]]:
    def apply(value: Any) -> Callable[[Dataset], None]:
        def mutate(ds: Dataset) -> None:
            setattr(ds, keyword, value)

        mutate.__name__ = f"{keyword}={value!r}"[:120]
        return mutate

    return values.map(apply)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        if keyword in ds:
            delattr(ds, keyword)

    mutate.__name__ = f"del {keyword}"
    return mutate


def _truncate_pixels(fraction: float) -> Callable[[Dataset], None]:
    def mutate(ds: Dataset) -> None:
        if "PixelData" in ds:
            ds.PixelData = ds.PixelData[: int(len(ds.PixelData) * fraction)]

    mutate.__name__ = f"PixelData[:{fraction:.2f}]"
    return mutate


HEADER_MUTATIONS: st.SearchStrategy[Callable[[Dataset], None]] = st.one_of(
    _set("ImageOrientationPatient", st.one_of(vector6, odd_length)),
    _set("ImagePositionPatient", st.one_of(vector3, odd_length)),
    _set("PixelSpacing", st.one_of(st.lists(any_float, min_size=2, max_size=2), odd_length)),
    _set("SliceThickness", any_float),
    _set("SpacingBetweenSlices", any_float),
    _set("Rows", small_int),
    _set("Columns", small_int),
    _set("BitsAllocated", st.sampled_from([0, 1, 8, 12, 16, 32, 64, 7])),
    _set("BitsStored", st.integers(min_value=0, max_value=40)),
    _set("HighBit", st.integers(min_value=0, max_value=40)),
    _set("PixelRepresentation", st.integers(min_value=0, max_value=2)),
    _set("SamplesPerPixel", st.integers(min_value=0, max_value=4)),
    _set(
        "PhotometricInterpretation",
        st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", ""]),
    ),
    _set("NumberOfFrames", st.integers(min_value=-1, max_value=5)),
    _set("RescaleSlope", any_float),
    _set("RescaleIntercept", any_float),
    _set(
        "ImageType",
        st.sampled_from([["ORIGINAL", "PRIMARY", "LOCALIZER"], ["DERIVED", "SECONDARY", "MOSAIC"], []]),
    ),
    _set("SeriesInstanceUID", st.sampled_from(["1.2.3.4", "", "1.2.3.4.5.6.7.8.9"])),
    _set("SOPInstanceUID", st.sampled_from(["1.2.3", ""])),
    st.floats(min_value=0.0, max_value=0.99).map(_truncate_pixels),
    st.sampled_from(
        [
            _delete(k)
            for k in (
                "ImageOrientationPatient",
                "ImagePositionPatient",
                "PixelSpacing",
                "PixelData",
                "Rows",
                "Columns",
                "BitsAllocated",
                "SOPClassUID",
                "SeriesInstanceUID",
                "FrameOfReferenceUID",
                "PhotometricInterpretation",
            )
        ]
    ),
)


def _check(items: list[Any]) -> None:
    try:
        volumes = load_series(items)
    except NotSegmentableError as exc:
        assert exc.reason in REASONS, exc.reason
        assert exc.message, "a NotSegmentableError without a message"
        return
    assert volumes, "load_series returned no volume and raised nothing"
    for volume in volumes:
        assert isinstance(volume, Volume)
        assert volume.voxels.ndim == 3 and volume.voxels.dtype == np.float32
        assert volume.affine.shape == (4, 4) and np.isfinite(volume.affine).all()
        assert abs(np.linalg.det(volume.affine[:3, :3])) > 0
        assert len(volume.slice_refs) == volume.voxels.shape[2]


@FUZZ
@given(
    mutations=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(min_value=0, max_value=len(PD_SERIES) - 1)), HEADER_MUTATIONS
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_headers_of_a_classic_series(
    mutations: list[tuple[int | None, Callable[[Dataset], None]]],
) -> None:
    """Each mutation hits one slice (index) or every slice (None)."""
    series = [copy.deepcopy(ds) for ds in PD_SERIES]
    for index, mutate in mutations:
        for ds in series if index is None else [series[index]]:
            mutate(ds)
    _check(series)


@FUZZ
@given(
    subset=st.lists(st.integers(min_value=0, max_value=len(PD_SERIES) - 1), min_size=0, max_size=20),
)
def test_any_subset_and_order_of_the_slices(subset: list[int]) -> None:
    """Missing, repeated and shuffled slices."""
    _check([copy.deepcopy(PD_SERIES[i]) for i in subset])


FUNCTIONAL_GROUP_MUTATIONS = st.sampled_from(
    [
        ("PlanePositionSequence", "ImagePositionPatient", [math.nan, 0.0, 0.0]),
        ("PlanePositionSequence", "ImagePositionPatient", [0.0, 0.0]),
        ("PlaneOrientationSequence", "ImageOrientationPatient", [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        ("PlaneOrientationSequence", "ImageOrientationPatient", [0.0] * 6),
        ("PixelMeasuresSequence", "PixelSpacing", [0.0, 0.0]),
        ("PixelMeasuresSequence", "PixelSpacing", [-1.0, 1.0]),
        ("PixelMeasuresSequence", "SliceThickness", math.inf),
    ]
)


@FUZZ
@given(
    frames=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=3),
    change=FUNCTIONAL_GROUP_MUTATIONS,
    shared=st.booleans(),
    frame_count=st.one_of(st.none(), st.integers(min_value=0, max_value=1000)),
)
def test_mutated_functional_groups_of_an_enhanced_series(
    frames: list[int], change: tuple[str, str, Any], shared: bool, frame_count: int | None
) -> None:
    sequence, keyword, value = change
    series = [copy.deepcopy(ds) for ds in ENHANCED_SERIES]
    for ds in series:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        targets = list(ds.get("SharedFunctionalGroupsSequence") or []) if shared else []
        targets += [per_frame[i % len(per_frame)] for i in frames] if per_frame else []
        for group in targets:
            if sequence in group and len(group[sequence].value):
                setattr(group[sequence].value[0], keyword, value)
        if frame_count is not None:
            ds.NumberOfFrames = frame_count
    _check(series)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(PD_SERIES) - 1),
            st.floats(min_value=0.0, max_value=1.0),
            st.one_of(st.binary(min_size=1, max_size=8), st.just(b"")),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_bytes_of_the_files(
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, float, bytes, bool]],
) -> None:
    """Overwrite a few bytes (``truncate`` False) or cut the file there (True), then load from disk."""
    folder = tmp_path_factory.mktemp("fuzz")
    files = list(PD_BYTES)
    for index, where, data, truncate in edits:
        raw = files[index]
        at = min(int(where * len(raw)), len(raw))
        files[index] = raw[:at] if truncate else raw[:at] + data + raw[at + len(data) :]
    paths = []
    for i, raw in enumerate(files):
        path = folder / f"{i:03d}.dcm"
        path.write_bytes(raw)
        paths.append(path)
    _check(paths)
