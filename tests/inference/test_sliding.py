"""The slab-by-slab sliding window (inference/sliding.py), CPU precision and thread settings, on the trained
tiny nnU-Net models and real MRI."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydantic
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from config.inference import InferenceConfig
from conversion import load_series
from inference import preprocess, sliding
from inference.engine import LPS_TO_RAS, Engine, configure_cpu_threads
from inference.nnunet_models import Predictor, build_predictor, predict_labels
from inference.registry import get_part_model
from inference.sliding import predict_labels_bounded, sliding_window_labels, tile_starts
from tests.support.paths import MODELS, PD_TRA, ROOT, T2_SAG

CPU = torch.device("cpu")


def model_image(folder: Path, spacing: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """A real series as the engine hands it to a part model: canonical, zoomed to the model spacing."""
    volume = load_series(sorted(p for p in folder.rglob("*") if p.is_file()))[0]
    voxels = np.asarray(volume.voxels, dtype=np.float64)
    canonical = preprocess.to_canonical(voxels, LPS_TO_RAS @ volume.affine)
    zooms = preprocess.header_zooms(canonical.affine)
    zoom = preprocess.zoom_factors(zooms, spacing)
    if zoom is None:
        return canonical.data, zooms
    return preprocess.resample_image_cpu(canonical.data, zoom), np.full(3, spacing, dtype=np.float32)


@pytest.fixture
def predictors() -> dict[int, Predictor]:
    torch.set_num_threads(2)
    return {
        dataset_id: build_predictor(get_part_model(dataset_id).model_dir(MODELS), 0, CPU, step)
        for dataset_id, step in ((850, 0.8), (851, 0.5), (852, 0.8))
    }


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "axial": model_image(PD_TRA),
        "sagittal": model_image(T2_SAG),
        "sagittal_3mm": model_image(T2_SAG, 3.0),
    }


def dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    scores = {}
    for label in labels:
        x, y = a == label, b == label
        scores[int(label)] = 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())
    return scores


@pytest.mark.parametrize(
    ("dataset_id", "image_name", "slabs"),
    [(850, "sagittal", 5), (851, "sagittal", 7), (852, "sagittal_3mm", 3), (850, "axial", 1)],
)
def test_slab_by_slab_labels_equal_nnunets_whole_image_path(
    predictors: dict[int, Predictor],
    images: dict[str, tuple[np.ndarray, np.ndarray]],
    dataset_id: int,
    image_name: str,
    slabs: int,
) -> None:
    image, zooms = images[image_name]
    predictor = predictors[dataset_id]
    patch = predictor.configuration_manager.patch_size
    # slabs along nnU-Net's first axis (canonical z): the accumulators are shifted and reused between them
    starts = tile_starts(tuple(int(n) for n in image.shape[::-1]), patch, predictor.tile_step_size)
    assert len(starts[0]) == slabs
    got = predict_labels_bounded(predictor, image, zooms)  # first: a fresh predictor has its weights loaded
    expected = predict_labels(predictor, image, zooms)
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert np.count_nonzero(expected), "the trained tiny models find structures here"
    np.testing.assert_array_equal(got, expected)


def test_image_smaller_than_the_patch_is_padded_as_nnunet_does(
    predictors: dict[int, Predictor], images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    image, zooms = images["axial"]
    small = np.ascontiguousarray(image[40:60, 30:52, 5:30])
    expected = predict_labels(predictors[850], small, zooms)
    np.testing.assert_array_equal(predict_labels_bounded(predictors[850], small, zooms), expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_an_image_shorter_than_the_patch_on_one_axis_accumulates_only_its_own_voxels(
    predictors: dict[int, Predictor],
    images: dict[str, tuple[np.ndarray, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
    axis: int,
) -> None:
    """Padded on one axis (nnU-Net pads it to the patch), tiled on the others: the labels are nnU-Net's, and
    the accumulators hold the image's voxels on the padded axis, not the patch's."""
    image, zooms = images["sagittal"]
    thin = [slice(None)] * 3
    thin[axis] = slice(10, 10 + 19)  # 19 voxels, the patch is 32
    small = np.ascontiguousarray(image[tuple(thin)])
    windows: list[tuple[int, ...]] = []
    real = sliding.accumulators

    def recording(classes: int, window: tuple[int, int, int], device: torch.device) -> Any:
        windows.append(window)
        return real(classes, window, device)

    monkeypatch.setattr(sliding, "accumulators", recording)
    got = predict_labels_bounded(predictors[850], small, zooms)
    expected = predict_labels(predictors[850], small, zooms)
    np.testing.assert_array_equal(got, expected)
    assert np.count_nonzero(expected)
    # data_xyz axis -> nnU-Net's (z, y, x) axis; the image is not cropped by nnU-Net (no zero border)
    assert windows[-1][2 - axis] == 19
    assert all(n > 19 for a, n in enumerate(windows[-1]) if a != 2 - axis)


def test_a_tiles_logits_are_freed_before_the_next_tile_runs(
    predictors: dict[int, Predictor], images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """At full size one tile's logits are 275-357 MB: the sliding window lets them go before it runs the
    network on the next tile, so they are not held beside that tile's feature maps."""
    predictor = predictors[850]
    network = predictor.network
    outputs: list[StorageWeakRef] = []  # the storage: the sliding window keeps views of the output
    held: list[bool] = []

    def forward(tile: torch.Tensor) -> torch.Tensor:
        held.append(any(not ref.expired() for ref in outputs))
        out = network(tile)
        outputs.append(StorageWeakRef(out.untyped_storage()))
        return out

    predictor.network = cast("Any", _Callable(forward))
    image, zooms = images["sagittal"]
    predict_labels_bounded(predictor, image, zooms)
    assert len(held) > 10, "many tiles"
    assert not any(held)


class _Callable(torch.nn.Module):
    """A module running ``forward`` (the sliding window calls ``.to()`` and ``.eval()`` on the network)."""

    def __init__(self, function: Any) -> None:
        super().__init__()
        self.function = function

    def forward(self, tile: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.function(tile)
        return out


def test_the_predictor_holds_one_copy_of_the_weights(predictors: dict[int, Predictor]) -> None:
    """nnU-Net's whole-image path loads ``list_of_parameters`` into the network: it is the network's own
    state (the same storage), not a second copy of the checkpoint's weights."""
    predictor = predictors[850]
    (state,) = predictor.list_of_parameters
    parameters = dict(predictor.network.state_dict())
    assert state.keys() == parameters.keys()
    assert all(state[k].data_ptr() == parameters[k].data_ptr() for k in state)


def test_image_off_the_model_spacing_takes_nnunets_resampling_path(
    predictors: dict[int, Predictor], images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    image, _ = images["axial"]
    zooms = np.array([1.2, 1.5, 1.8], dtype=np.float32)  # nnU-Net resamples to 1.5 mm and back
    expected = predict_labels(predictors[850], image, zooms)
    np.testing.assert_array_equal(predict_labels_bounded(predictors[850], image, zooms), expected)


def test_bf16_runs_the_network_in_bfloat16_and_fp32_does_not(
    predictors: dict[int, Predictor], images: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    predictor = predictors[850]
    first_conv = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv3d))
    seen: list[torch.dtype] = []
    handle = first_conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        data = torch.from_numpy(np.zeros((1, 40, 40, 40), dtype=np.float32))
        sliding_window_labels(predictor, data, "fp32")
        fp32_seen = set(seen)
        seen.clear()
        sliding_window_labels(predictor, data, "bf16")
    finally:
        handle.remove()
    assert fp32_seen == {torch.float32}
    assert set(seen) == {torch.bfloat16}


def test_bf16_stays_close_to_fp32_on_the_trained_models_but_not_within_0999() -> None:
    """The reduced-precision check on trained networks. bf16 agrees with fp32 on most voxels and on the large
    structures, but small structures fall well under Dice 0.999 (near-tied logits of the tiny networks), so it
    stays opt-in: the default is fp32."""
    assert InferenceConfig().cpu_precision == "fp32"
    agreement, large, worst = [], [], []
    cases = ((850, 0.8, PD_TRA, 1.5), (851, 0.5, T2_SAG, 1.5), (852, 0.8, T2_SAG, 3.0))
    for dataset_id, step, folder, spacing in cases:
        predictor = build_predictor(get_part_model(dataset_id).model_dir(MODELS), 0, CPU, step)
        image, zooms = model_image(folder, spacing)
        fp32 = predict_labels_bounded(predictor, image, zooms, "fp32")
        bf16 = predict_labels_bounded(predictor, image, zooms, "bf16")
        agreement.append(float((fp32 == bf16).mean()))
        scores = dice_per_label(fp32, bf16)
        biggest = max(scores, key=lambda label: int((fp32 == label).sum()))
        large.append(scores[biggest])
        worst.append(min(scores.values()))
    assert min(agreement) >= 0.95, agreement
    assert min(large) >= 0.9, large
    assert min(worst) < 0.999, worst  # when this fails, bf16 holds on these networks: reconsider the default


def test_engine_uses_the_configured_precision(images: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    volume = load_series(sorted(PD_TRA.glob("*.dcm")))[0]
    results = {}
    for precision in ("fp32", "bf16"):
        config = InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=2, cpu_precision=precision)
        engine = Engine(config)
        predictor = engine.predictor(get_part_model(850), CPU, 0.8)
        first_conv = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv3d))
        seen: list[torch.dtype] = []
        handle = first_conv.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out.dtype))
        try:
            results[precision] = engine.segment(volume.voxels, volume.affine).labels
        finally:
            handle.remove()
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert results["fp32"].shape == results["bf16"].shape == volume.shape


def test_cpu_precision_rejects_other_values() -> None:
    with pytest.raises(pydantic.ValidationError, match="cpu_precision"):
        InferenceConfig(cpu_precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="cpu_interop_threads"):
        InferenceConfig(cpu_interop_threads=0)


def test_engine_sets_the_configured_cpu_threads() -> None:
    before = torch.get_num_threads()
    try:
        engine = Engine(InferenceConfig(weights_dir=MODELS, device="cpu", cpu_threads=1))
        assert engine.device == CPU
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_interop_threads_set_in_a_fresh_process_and_kept_with_a_warning_later() -> None:
    code = textwrap.dedent(
        """
        import json, logging, torch
        logging.basicConfig(level=logging.WARNING)
        from inference.engine import configure_cpu_threads
        configure_cpu_threads(1, 3)
        first = (torch.get_num_threads(), torch.get_num_interop_threads())
        torch.ones(4) + 1
        configure_cpu_threads(1, 1)  # too late for inter-op threads once they ran: kept, warned
        print(json.dumps([first, torch.get_num_interop_threads()]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    first, later = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == [1, 3]
    assert later == 3
    assert "inter-op threads stay 3" in proc.stderr


def test_configure_cpu_threads_defaults_to_all_cores(caplog: Any) -> None:
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="inference.engine"):
            configure_cpu_threads(None, None)
        assert torch.get_num_threads() >= 1
        assert "intra-op" in caplog.text
    finally:
        torch.set_num_threads(before)
