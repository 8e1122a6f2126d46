"""Write random-initialised networks of exactly the published TotalSegmentator MRI architectures.

The networks stand in for the real checkpoints of ``total_mr`` where speed and memory are measured: same
architecture, same patch size, same amount of work per tile, random weights (fixed seed, nnU-Net's He
initialisation). They are NOT clinical models and their label maps mean nothing; two tools running the same
computation on them must still give the same labels.

Architectures (``dynamic_network_architectures`` ``PlainConvUNet``, 3x3x3 kernels everywhere, two
convolutions per stage in encoder and decoder, instance norm (affine, eps 1e-5) and leaky ReLU (0.01),
conv bias):

* 850 (organs, 29 labels + background) and 851 (muscles/bones, 21 + background), 1.5 mm: 6 stages,
  features 32-64-128-256-320-320, strides 1, 2, 2, 2, 2 and (1, 2, 2) in the last stage (30.8 M parameters);
* 852 (all 50 labels + background), 3 mm: 5 stages, 32-64-128-256-320, strides 1, 2, 2, 2, 2;
* 853 (all 50 labels + background), 6 mm: 4 stages, 32-64-128-256, strides 1, 2, 2, 2.

Patch sizes come from nnU-Net's own planner (``ExperimentPlanner``, 8 GB VRAM target, the planner that gives
``PlainConvUNet``), run here on a synthetic raw dataset of typical abdominal MRI extent (a body ellipsoid in
a 300 x 380 x 380 mm field of view, z x y x x, two cases) at each spacing. With nnunetv2 2.8.1 it gives, in
nnU-Net's (z, y, x) order:

* 1.5 mm (image 200 x 253 x 253 voxels): patch 112 x 160 x 128, and exactly the 850/851 network above;
* 3 mm (100 x 127 x 127): patch 112 x 128 x 128 (the planner would choose 6 stages for it; the published
  852 network has 5, which the patch also fits: every axis a multiple of 2^4);
* 6 mm (50 x 63 x 63): patch 56 x 64 x 64 (the planner's 5 stages; 853 has 4, every axis a multiple of 2^3).

The script prints what the planner chose and refuses a patch that the published network cannot tile (an
axis not divisible by its total stride).

Layout: TotalSegmentator's weights folder (as ``scripts/train_tiny_models.py`` writes for the tiny models and
as ``TOTALSEG_WEIGHTS_PATH`` expects): ``<out>/DatasetNNN_Name/nnUNetTrainer_2000epochs_NoMirroring__
nnUNetPlans__3d_fullres/{dataset.json, plans.json, fold_0/checkpoint_final.pth}``, ``dataset.json`` with the
``total_mr`` label maps of the part models. About 320 MB in all: write them outside the repository, never
commit them.

Usage: ``nice python scripts/make_fullsize_models.py [--out /work/fullsize-weights] [--models 850,851,852]``
(default: all four models).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.registry import PartModel, get_part_model  # noqa: E402

SEED = 20261204
DEFAULT_OUT = Path("/work/fullsize-weights")
#: Field of view of a typical abdominal MRI (mm, nnU-Net's z, y, x order) used to plan the patch sizes.
TYPICAL_FOV_MM = (300.0, 380.0, 380.0)
ARCH_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
ARCH_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def published_architecture(dataset_id: int) -> dict[str, Any]:
    """``arch_kwargs`` of the published network of part model ``dataset_id``."""
    if dataset_id in (850, 851):
        features = [32, 64, 128, 256, 320, 320]
        strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    elif dataset_id == 852:
        features = [32, 64, 128, 256, 320]
        strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    elif dataset_id == 853:
        features = [32, 64, 128, 256]
        strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    else:
        raise SystemExit(f"no published architecture known for model {dataset_id}")
    n = len(features)
    return {
        "n_stages": n,
        "features_per_stage": features,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": strides,
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def _synthetic_case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A body ellipsoid (MR-like intensities with noise) over dark air, and its mask as the label."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    centre = [s / 2 for s in shape]
    radii = [s * 0.45 for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    image = rng.normal(20.0, 5.0, shape)
    image[inside] = rng.normal(400.0, 80.0, int(inside.sum()))
    return np.abs(image).astype(np.int16), inside.astype(np.uint8)


def plan_patch_size(spacing_mm: float, work: Path) -> tuple[list[int], dict[str, Any]]:
    """Run nnU-Net's fingerprint extraction and ``ExperimentPlanner`` on a synthetic raw dataset."""
    import SimpleITK as sitk

    os.environ["nnUNet_raw"] = str(work / "raw")
    os.environ["nnUNet_preprocessed"] = str(work / "preprocessed")
    os.environ["nnUNet_results"] = str(work / "results")
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )

    dataset_id = 900 + int(spacing_mm * 10)
    name = f"Dataset{dataset_id}_TypicalMR{str(spacing_mm).replace('.', 'p')}mm"
    raw = work / "raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    shape = tuple(int(round(mm / spacing_mm)) for mm in TYPICAL_FOV_MM)
    rng = np.random.default_rng(SEED)
    for case in range(2):
        image, label = _synthetic_case((shape[0], shape[1], shape[2]), rng)
        for array, path in (
            (image, raw / "imagesTr" / f"case{case:03d}_0000.nii.gz"),
            (label, raw / "labelsTr" / f"case{case:03d}.nii.gz"),
        ):
            itk = sitk.GetImageFromArray(array)  # array (z, y, x) as nnU-Net reads it back
            itk.SetSpacing([spacing_mm] * 3)
            sitk.WriteImage(itk, str(path))
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "body": 1},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):  # the planner prints every configuration it makes
        DatasetFingerprintExtractor(dataset_id, num_processes=1).run()
        plans: dict[str, Any] = ExperimentPlanner(dataset_id).plan_experiment()
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    print(
        f"  planner at {spacing_mm} mm, image {shape}: patch {config['patch_size']}, "
        f"{arch['n_stages']} stages {arch['features_per_stage']}, strides {arch['strides']}"
    )
    return [int(v) for v in config["patch_size"]], plans


def model_plans(model: PartModel, planner_plans: dict[str, Any], patch: list[int]) -> dict[str, Any]:
    """The planner's plans with the published network and the planned patch, as TotalSegmentator ships."""
    arch = published_architecture(model.dataset_id)
    total_stride = np.prod(np.array(arch["strides"]), axis=0)
    if any(p % s for p, s in zip(patch, total_stride, strict=True)):
        raise SystemExit(
            f"patch {patch} cannot be tiled by model {model.dataset_id} (total stride {total_stride})"
        )
    plans = copy.deepcopy(planner_plans)
    plans["dataset_name"] = model.dataset_folder_name
    plans["plans_name"] = model.plans
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"] = patch
    config["architecture"] = {
        "network_class_name": ARCH_CLASS,
        "arch_kwargs": arch,
        "_kw_requires_import": ARCH_REQUIRES_IMPORT,
    }
    plans["configurations"] = {model.configuration: config}
    return plans


def dataset_json(model: PartModel) -> dict[str, Any]:
    labels = {"background": 0}
    labels.update({name: value for value, name in sorted(model.class_map.items())})
    return {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": 1088,
        "file_ending": ".nii.gz",
        "name": model.dataset_folder_name,
        "description": "Random-initialised network with the published architecture "
        "(scripts/make_fullsize_models.py), for speed and memory measurements; NOT a clinical model.",
    }


def write_model(model: PartModel, plans: dict[str, Any], out: Path) -> Path:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    torch.manual_seed(SEED + model.dataset_id)
    config = plans["configurations"][model.configuration]["architecture"]
    net = get_network_from_plans(
        config["network_class_name"],
        config["arch_kwargs"],
        config["_kw_requires_import"],
        1,
        model.num_labels + 1,
        allow_init=True,
        deep_supervision=False,
    )
    folder = model.model_dir(out)
    (folder / f"fold_{model.fold}").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1) + "\n")
    (folder / "dataset.json").write_text(json.dumps(dataset_json(model), indent=1) + "\n")
    checkpoint = {
        "network_weights": net.state_dict(),
        "init_args": {
            "plans": plans,
            "configuration": model.configuration,
            "fold": model.fold,
            "dataset_json": dataset_json(model),
            "device": "cpu",
        },
        "trainer_name": model.trainer,
        "inference_allowed_mirroring_axes": None,
        "current_epoch": 0,
    }
    path = model.checkpoint_path(out)
    torch.save(checkpoint, path)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"  wrote {path} ({n_params / 1e6:.1f} M parameters, {path.stat().st_size / 1e6:.0f} MB)")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--models", default="850,851,852,853")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"{out} is inside the repository; full-size weights are never committed")
    models = [get_part_model(int(x)) for x in args.models.split(",")]
    planned: dict[float, tuple[list[int], dict[str, Any]]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segnode_plan_") as tmp:
        for spacing in sorted({m.spacing_mm for m in models}):
            planned[spacing] = plan_patch_size(spacing, Path(tmp) / f"{spacing}mm")
    for model in models:
        patch, plans = planned[model.spacing_mm]
        print(f"model {model.dataset_id} ({model.dataset_folder_name}): patch {patch}")
        write_model(model, model_plans(model, plans, patch), out)
    print(f"done in {time.perf_counter() - start:.0f} s; TOTALSEG_WEIGHTS_PATH={out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
