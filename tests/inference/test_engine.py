"""The inference engine on real MRI with the tiny nnU-Net models (real nnunetv2 inference on the CPU)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from config.inference import InferenceConfig
from conversion import Volume, load_series
from inference import engine as engine_mod
from inference.engine import (
    DeviceUnavailableError,
    Engine,
    InputTooLargeError,
    InputTooSmallError,
    InvalidRoiError,
    MissingWeightsError,
    OutOfMemoryError,
    resolve_device,
)
from inference.registry import UnknownTaskError, UnsupportedModeError, get_part_model, get_task
from tests.support.paths import MODELS, PD_TRA

AXIAL_3D = PD_TRA


def load(folder: Path) -> list[Volume]:
    return load_series(sorted(folder.glob("*.dcm")))


@pytest.fixture(scope="module")
def volume() -> Volume:
    return load(AXIAL_3D)[0]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=2))


@pytest.fixture(scope="module")
def default_result(engine: Engine, volume: Volume) -> engine_mod.SegmentationResult:
    return engine.segment(volume.voxels, volume.affine, task="total_mr")


def test_default_total_mr_gives_a_label_map_on_the_source_grid(
    default_result: engine_mod.SegmentationResult, volume: Volume
) -> None:
    result = default_result
    assert result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert result.task == "total_mr" and result.mode == "default" and result.device == "cpu"
    assert dict(result.class_map) == dict(get_task("total_mr").class_map)
    present = result.present_labels()
    assert present, "the tiny models find structures in real MRI"
    assert set(present) <= set(result.class_map)
    # labels of both part models (850: 1-29, 851: 30-50) end up in the merged map
    assert any(v <= 29 for v in present) and any(v >= 30 for v in present)
    assert [m.dataset_id for m in result.models] == [850, 851]
    ckpt = get_part_model(850).checkpoint_path(MODELS)
    assert result.models[0].checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    stages = ("reorient", "resample", "predict_850", "predict_851", "merge", "resample_back")
    for stage in (*stages, "release_memory", "total"):
        assert result.timings[stage] >= 0.0
    assert result.events == []


def test_label_map_is_smooth_not_noise(default_result: engine_mod.SegmentationResult) -> None:
    labels = default_result.labels
    # foreground voxels share their label with their neighbour far more often than scattered labels would
    # (which would agree about as often as the foreground fraction, here well under 1 %)
    fg = labels[:-1] != 0
    same = (labels[:-1] == labels[1:]) & fg
    fraction = float((labels != 0).mean())
    assert fraction < 0.5
    assert same.sum() / max(int(fg.sum()), 1) > max(0.4, 20 * fraction)


def test_predictors_are_built_once_and_reused(engine: Engine, volume: Volume, default_result: Any) -> None:
    before = dict(engine._predictors)
    again = engine.segment(volume.voxels, volume.affine, task="total_mr")
    assert engine._predictors == before and all(engine._predictors[k] is before[k] for k in before)
    np.testing.assert_array_equal(again.labels, default_result.labels)


def test_merge_writes_851_over_850(engine: Engine, volume: Volume, default_result: Any) -> None:
    task = get_task("total_mr")
    parts = []
    for dataset_id in (850, 851):
        single = engine._run(
            task,
            [get_part_model(dataset_id)],
            volume.voxels,
            volume.affine_ras,
            {},
            [],
            torch.device("cpu"),
            "",
        )
        parts.append(single)
    expected = np.where(parts[1] != 0, parts[1], parts[0])
    np.testing.assert_array_equal(default_result.labels, expected)
    assert set(np.unique(parts[0])) <= set(range(0, 30))
    assert set(np.unique(parts[1])) <= {0, *range(30, 51)}


def test_fast_mode_runs_852_at_3_mm(engine: Engine, volume: Volume) -> None:
    result = engine.segment(volume.voxels, volume.affine, task="total_mr", fast=True)
    assert result.mode == "fast" and [m.dataset_id for m in result.models] == [852]
    assert result.labels.shape == volume.shape and result.present_labels()
    assert "predict_852" in result.timings


def test_roi_subset_crops_with_852_and_runs_only_the_parts_needed(engine: Engine, volume: Volume) -> None:
    fast = engine.segment(volume.voxels, volume.affine, task="total_mr", fast=True)
    wanted = [fast.class_map[v] for v in fast.present_labels() if v <= 29][:1]  # a structure of part 850
    assert wanted, "852 finds a structure of part 850 in this series"
    result = engine.segment(volume.voxels, volume.affine, task="total_mr", roi_subset=wanted)
    assert [m.dataset_id for m in result.models] == [852, 850]
    assert result.roi_subset == tuple(wanted)
    assert set(result.class_map.values()) == set(wanted)
    assert set(result.present_labels()) <= set(result.class_map)
    assert "roi_predict_852" in result.timings and "predict_851" not in result.timings


def test_roi_subset_rejects_unknown_structures(engine: Engine, volume: Volume) -> None:
    with pytest.raises(InvalidRoiError) as err:
        engine.segment(volume.voxels, volume.affine, roi_subset=["liver", "kidney_middle"])
    assert err.value.reason == "invalid_roi_subset" and "kidney_middle" in err.value.message
    with pytest.raises(InvalidRoiError):
        engine.segment(volume.voxels, volume.affine, task="vertebrae_mr", roi_subset=["sacrum"])


def test_missing_weights_name_task_folder_and_remedy(tmp_path: Path, volume: Volume) -> None:
    engine = Engine(InferenceConfig(weights_dir=tmp_path, device="cpu"))
    with pytest.raises(MissingWeightsError) as err:
        engine.segment(volume.voxels, volume.affine, task="total_mr")
    message = err.value.message
    assert err.value.reason == "missing_weights"
    assert "total_mr" in message and "Dataset850_TotalSegMRI_part1_organs_1088subj" in message
    assert str(tmp_path) in message and "segnode models download total_mr" in message
    with pytest.raises(MissingWeightsError) as licensed:
        engine.segment(volume.voxels, volume.affine, task="face_mr")
    assert (
        "--license-key" in licensed.value.message
        and "Dataset856_TotalSegMRI_face_1088subj" in licensed.value.message
    )


def test_weights_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    assert Engine(InferenceConfig()).weights_dir == tmp_path
    assert Engine(InferenceConfig(weights_dir=MODELS)).weights_dir == MODELS
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH")
    assert Engine(InferenceConfig()).weights_dir == Path.home() / ".totalsegmentator" / "nnunet" / "results"


def test_input_too_small_and_too_large(engine: Engine, volume: Volume) -> None:
    with pytest.raises(InputTooSmallError) as small:
        engine.segment(volume.voxels[:, :, :1], volume.affine)
    assert small.value.reason == "input_too_small" and "2D" in small.value.message
    with pytest.raises(InputTooSmallError):
        engine.segment(volume.voxels[:, :, 0], volume.affine)
    limited = Engine(InferenceConfig(weights_dir=MODELS, device="cpu", max_voxels=100_000))
    with pytest.raises(InputTooLargeError) as large:
        limited.segment(volume.voxels, volume.affine)
    assert large.value.reason == "input_too_large" and "inference.max_voxels" in large.value.message


def test_unknown_task_and_mode(engine: Engine, volume: Volume) -> None:
    with pytest.raises(UnknownTaskError):
        engine.segment(volume.voxels, volume.affine, task="total")
    with pytest.raises(UnsupportedModeError):
        engine.segment(volume.voxels, volume.affine, task="tissue_types_mr", fast=True)


def test_device_resolution_without_cuda() -> None:
    assert str(resolve_device("cpu")) == "cpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-CUDA errors are checked on CPU machines")
    assert str(resolve_device("auto")) == "cpu"
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DeviceUnavailableError) as err:
            resolve_device(spec)
        assert err.value.reason == "device_unavailable" and spec in err.value.message
    with pytest.raises(DeviceUnavailableError) as bad:
        resolve_device("tpu")
    assert "auto, cpu, cuda or cuda:N" in bad.value.message


class _OutOfMemoryNetwork(torch.nn.Module):
    """Stands in for a network on a GPU (no GPU here): every forward pass runs out of GPU memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _with_fake_gpu(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.predictor

    def predictor(model: Any, device: Any, step: float) -> Any:
        if device.type != "cuda":
            return real(model, device, step)
        fake = copy.copy(real(model, torch.device("cpu"), step))  # a real predictor whose network fails
        fake.network = _OutOfMemoryNetwork()
        return fake

    monkeypatch.setattr(engine, "predictor", predictor)


def test_gpu_out_of_memory_falls_back_to_cpu_and_is_recorded(
    engine: Engine, volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_fake_gpu(engine, monkeypatch)
    model = get_part_model(852)
    image = np.asarray(volume.voxels, dtype=np.float64)
    zooms = np.array([3.0, 3.0, 3.0], dtype=np.float32)
    events: list[str] = []
    labels = engine._predict(model, image, zooms, torch.device("cuda:0"), 0.8, events)
    assert len(events) == 2
    assert "logits on the CPU" in events[0] and "device cpu" in events[1]
    expected = engine._predict(model, image, zooms, torch.device("cpu"), 0.8, [])
    np.testing.assert_array_equal(labels, expected)


def test_gpu_out_of_memory_without_fallback_fails_with_reason(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(InferenceConfig(weights_dir=MODELS, device="cpu", gpu_oom_fallback=False))
    _with_fake_gpu(engine, monkeypatch)
    with pytest.raises(OutOfMemoryError) as err:
        engine._predict(
            get_part_model(852),
            np.zeros((8, 8, 8)),
            np.ones(3, np.float32) * 3,
            torch.device("cuda:0"),
            0.8,
            [],
        )
    assert err.value.reason == "out_of_memory" and "852" in err.value.message


def test_warm_up_builds_the_predictors(tmp_path: Path) -> None:
    engine = Engine(InferenceConfig(weights_dir=MODELS, device="cpu"))
    engine.warm_up("total_mr", fast=True)
    assert [key[0] for key in engine._predictors] == [852]
