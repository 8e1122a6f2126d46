"""The engine on a CUDA device (skipped without one): same pre/post-processing bits as on the CPU, and the
same segmentation up to fp16 autocast in the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from config.inference import InferenceConfig
from conversion import load_series
from inference import gpu_resample
from inference.engine import Engine
from tests.support.paths import MODELS, PD_TRA

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

AXIAL_3D = PD_TRA


def test_resampling_on_cuda_is_bit_equal_to_scipy() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(8, 64, 3))
        data = rng.integers(0, 8, shape).astype(np.float64)
        zoom = rng.uniform(0.3, 3.0, 3)
        expected = ndimage.zoom(data, zoom, order=1, mode="nearest").astype(np.int32)
        np.testing.assert_array_equal(gpu_resample.zoom_linear(data, expected.shape, "cuda"), expected)
        labels = rng.integers(0, 51, shape).astype(np.uint8)
        target = tuple(int(n) for n in rng.integers(8, 96, 3))
        back = ndimage.zoom(labels, np.array(target) / np.array(shape), order=0, mode="nearest")
        np.testing.assert_array_equal(gpu_resample.zoom_nearest(labels, back.shape, "cuda"), back)


@pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])
def test_cuda_and_cpu_give_the_same_segmentation(fast: bool) -> None:
    volume = load_series(sorted(AXIAL_3D.glob("*.dcm")))[0]
    gpu = Engine(InferenceConfig(weights_dir=MODELS, device="cuda")).segment(
        volume.voxels, volume.affine, fast=fast
    )
    cpu = Engine(InferenceConfig(weights_dir=MODELS, device="cpu")).segment(
        volume.voxels, volume.affine, fast=fast
    )
    assert gpu.device.startswith("cuda") and gpu.events == []
    labels = sorted(set(gpu.present_labels()) | set(cpu.present_labels()))
    assert labels
    for value in labels:
        a, b = gpu.labels == value, cpu.labels == value
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        # fp16 autocast on CUDA vs fp32 on the CPU: on an H200 (2026-11-28) every label was within Dice 0.994
        # except kidney_left of the fast model, 12 of 492 voxels different (0.988)
        assert dice >= 0.98, (gpu.class_map[value], dice)
