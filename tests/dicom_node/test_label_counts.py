"""label_counts (dicom_node.outputs.derived): the voxels per label equal numpy's bincount for every kind of
label map, counts above 2**24 (where a float32 histogram bin would round) included."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from dicom_node.outputs.derived import label_counts


def expected(label_map: Any) -> Any:
    return np.bincount(np.ravel(label_map))


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (7, 13, 5), (64, 64, 33), (512, 512, 3)], ids=lambda s: "x".join(map(str, s))
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_counts_are_those_of_bincount(shape: tuple[int, ...], dtype: Any) -> None:
    rng = np.random.default_rng(sum(shape))
    label_map = rng.integers(0, 51, size=shape).astype(dtype)
    label_map[..., 0] = 0
    counts = label_counts(label_map)
    assert counts.dtype == np.intp
    assert np.array_equal(counts, expected(label_map))


def test_the_highest_value_of_an_8_bit_map_is_counted() -> None:
    label_map = np.zeros((9, 9, 9), dtype=np.uint8)
    label_map[1, 2, 3] = 255
    assert np.array_equal(label_counts(label_map), expected(label_map))


def test_a_strided_8_bit_map_is_counted() -> None:
    label_map = np.random.default_rng(1).integers(0, 20, size=(40, 30, 20)).astype(np.uint8)
    view = label_map.transpose(2, 1, 0)[::2]
    assert np.array_equal(label_counts(view), expected(view))


def test_counts_above_2_to_the_24_are_exact() -> None:
    label_map = np.zeros((640, 512, 64), dtype=np.uint8)  # 20,971,520 voxels of background
    label_map[3, 4, 5] = 7
    counts = label_counts(label_map)
    assert counts[0] == label_map.size - 1 > 1 << 24
    assert np.array_equal(counts, expected(label_map))


def test_opencv_runs_its_loops_on_the_calling_thread_once_an_output_uses_it() -> None:
    """The derived objects' OpenCV work (here a count) leaves OpenCV's parallel loops off for the process
    (a fresh one: the setting is the process')."""
    script = (
        "import numpy as np, cv2\n"
        "from dicom_node.outputs.derived import label_counts\n"
        "label_counts(np.zeros((64, 64, 8), dtype=np.uint8))\n"
        "print(cv2.getNumThreads())\n"
    )
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == ["1"]
