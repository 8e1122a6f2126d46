"""The networks compiled for the CPU (inference/compiled.py, ``inference.cpu_compile``) on the trained tiny
nnU-Net models and real MRI: when they are compiled, that the labels stay those of the uncompiled network,
and that a failed compile leaves a working engine."""

from __future__ import annotations

import logging

import numpy as np
import pydantic
import pytest
import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from torch._dynamo.eval_frame import OptimizedModule

from config.inference import InferenceConfig
from conversion import load_series
from inference import compiled
from inference.engine import Engine
from inference.nnunet_models import build_predictor
from inference.registry import get_part_model
from inference.sliding import accumulators
from tests.support.paths import MODELS, PD_TRA

CPU = torch.device("cpu")


def test_auto_compiles_full_size_networks_on_the_cpu_with_one_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = build_predictor(get_part_model(850).model_dir(MODELS), 0, CPU, 0.8)
    small = compiled.parameter_count(predictor.network)
    assert 0 < small < compiled.AUTO_MIN_PARAMETERS  # the test network: auto leaves it eager
    assert not compiled.wants_compile(predictor, CPU, "auto")
    assert compiled.wants_compile(predictor, CPU, "on")
    assert not compiled.wants_compile(predictor, CPU, "off")
    assert not compiled.wants_compile(predictor, torch.device("cuda"), "on")
    monkeypatch.setattr(compiled, "AUTO_MIN_PARAMETERS", small)  # as large as a full-size network
    assert compiled.wants_compile(predictor, CPU, "auto")
    monkeypatch.setattr(predictor, "list_of_parameters", predictor.list_of_parameters * 2)
    assert not compiled.wants_compile(predictor, CPU, "on")  # an ensemble reloads weights per fold


def test_compiled_engine_gives_the_labels_of_the_uncompiled_one() -> None:
    """Same real series, same trained networks: compiled (on) and eager (off) labels agree per label."""
    volume = load_series(sorted(PD_TRA.glob("*.dcm")))[0]
    labels = {}
    for setting in ("off", "on"):
        config = InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=2, cpu_compile=setting)
        engine = Engine(config)
        engine.warm_up("total_mr")
        predictor = engine.predictor(get_part_model(850), CPU, 0.5)
        assert isinstance(predictor.network, OptimizedModule) == (setting == "on")
        labels[setting] = engine.segment(volume.voxels, volume.affine).labels
    eager, fast = labels["off"], labels["on"]
    assert eager.shape == fast.shape == volume.shape
    present = sorted(set(np.unique(eager)) - {0})
    assert len(present) >= 3, present  # the comparison covers several structures
    for label in present:
        a, b = eager == label, fast == label
        dice = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
        assert dice >= 0.999, (label, dice)
    assert float((eager == fast).mean()) >= 0.9999


def test_a_compiled_network_is_not_compiled_again_for_series_of_other_shapes() -> None:
    """The tiles given to the network are fresh contiguous tensors, as the warm-up's zero tile: series of
    other shapes, and one that is a single tile, reuse the one compiled graph (torch.compile specialises to
    the input's strides and kind; a compile per series shape would cost seconds each and, past dynamo's
    cache limit, fall back to the uncompiled network)."""
    from torch._dynamo.utils import counters

    config = InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=2, cpu_compile="on")
    engine = Engine(config)
    engine.warm_up("total_mr")
    compiled_graphs = counters["stats"]["unique_graphs"]
    volume = load_series(sorted(PD_TRA.glob("*.dcm")))[0]
    # under one 32-voxel patch at 1.5 mm on every axis: the image padded to the patch is the only tile
    one_tile = tuple(slice(0, int(40.0 // float(s))) for s in volume.spacing)
    crops = [(slice(None),) * 3, (slice(3, -7), slice(11, -2), slice(None)), one_tile]
    shapes = set()
    for crop in crops:
        voxels = np.ascontiguousarray(volume.voxels[crop])
        shapes.add(voxels.shape)
        assert engine.segment(voxels, volume.affine).labels.shape == voxels.shape
    assert len(shapes) == 3
    assert counters["stats"]["unique_graphs"] == compiled_graphs


def _no_compiler(*_args: object, **_kwargs: object) -> object:
    """torch.compile on a machine without a working C++ compiler."""
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")


def test_a_failed_compile_leaves_the_network_eager_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch, "compile", _no_compiler)
    engine = Engine(InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=2, cpu_compile="on"))
    volume = load_series(sorted(PD_TRA.glob("*.dcm")))[0]
    with caplog.at_level(logging.WARNING, logger="inference.compiled"):
        result = engine.segment(volume.voxels, volume.affine)
    assert result.labels.shape == volume.shape
    assert not isinstance(engine.predictor(get_part_model(850), CPU, 0.5).network, OptimizedModule)
    expected = "torch.compile of the network failed, running it eagerly (RuntimeError: InvalidCxxCompiler"
    assert expected in caplog.text


def test_slab_kernels_give_the_eager_operations_bit_for_bit() -> None:
    """The compiled accumulation and argmax/infinity check against the eager operations they replace, on
    accumulators of two widths (views, as in a series), with exact ties and an infinite logit."""
    classes, patch = 5, (6, 12, 10)
    assert compiled.compile_slab_kernels(classes, patch)
    kernels = compiled.slab_kernels(classes, patch, CPU)
    assert kernels is not None
    assert compiled.slab_kernels(classes, patch, torch.device("cuda")) is None
    assert compiled.slab_kernels(classes + 1, patch, CPU) is None
    generator = torch.Generator().manual_seed(7)
    gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=CPU)
    assert gaussian.dtype == torch.half  # as nnU-Net makes it, and the sliding window uses it
    with torch.inference_mode():
        for width in ((19, 23), (12, 31)):
            eager_logits, eager_weights = accumulators(classes, (patch[0], *width), CPU)
            logits, weights = accumulators(classes, (patch[0], *width), CPU)
            for y, x in ((0, 0), (width[0] - patch[1], width[1] - patch[2]), (0, width[1] - patch[2])):
                out = torch.randn((classes, *patch), generator=generator) * 40
                ys, xs = slice(y, y + patch[1]), slice(x, x + patch[2])
                kernels.accumulate(logits[:, :, ys, xs], weights[:, ys, xs], out.clone(), gaussian)
                out *= gaussian
                eager_logits[:, :, ys, xs] += out
                eager_weights[:, ys, xs] += gaussian
            assert torch.equal(logits, eager_logits) and torch.equal(weights, eager_weights)
            logits[3, 1] = logits[1, 1]  # class 3 ties class 1 on a whole plane: the first maximum wins
            for part in (logits, logits[:, :4]):
                best, infinite = kernels.finish(part)
                assert torch.equal(best, part.argmax(0)) and not bool(infinite)
            logits[2, 2, 3, 4] = float("inf")
            assert bool(kernels.finish(logits[:, :4])[1])


def test_failed_slab_kernels_leave_the_eager_operations(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch, "compile", _no_compiler)
    with caplog.at_level(logging.WARNING, logger="inference.compiled"):
        assert not compiled.compile_slab_kernels(4, (7, 9, 11))
    assert compiled.slab_kernels(4, (7, 9, 11), CPU) is None
    assert "sliding-window kernels failed, running them eagerly" in caplog.text


def test_cpu_compile_rejects_other_values() -> None:
    assert InferenceConfig().cpu_compile == "auto"
    with pytest.raises(pydantic.ValidationError, match="cpu_compile"):
        InferenceConfig(cpu_compile="yes")  # type: ignore[arg-type]
