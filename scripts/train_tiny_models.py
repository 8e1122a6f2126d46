"""Train the tiny nnU-Net v2 test models that stand in for TotalSegmentator's MRI models 850, 851 and 852.

The models have the real models' dataset folder names, trainer/plans/configuration strings, label names
and label counts, and the nnU-Net v2 file layout (``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth`` holding ``network_weights``, ``init_args``, ``trainer_name`` and
``inference_allowed_mirroring_axes``), so that
``nnUNetPredictor.initialize_from_trained_model_folder`` and the TotalSegmentator command load them as they
load the real weights. The network is a small ``PlainConvUNet`` (3 stages, 4/8/16 features, patch 32^3).

Training data are synthetic MR-like phantoms: a body ellipsoid over dark air, with smooth ellipsoidal
"organs" whose mean intensity identifies the structure (the same intensity for a structure in every model, so
that the 3 mm model 852 and the 1.5 mm pair 850/851 agree), a smooth multiplicative bias field and Rician-like
noise. On real MRI the models therefore give smooth label maps that follow the intensity regions, not noise.
The training loop is a compact torch loop (cross-entropy + soft Dice, Adam); its preprocessing is nnU-Net's
z-score normalisation of the whole image, as the plans declare.

Usage: ``nice python scripts/train_tiny_models.py [--out tests/data/models] [--iterations 400]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from inference.registry import PartModel, get_part_model, get_task

PATCH = (32, 32, 32)
FEATURES = [4, 8, 16]
SEED = 20241128

ARCH_KWARGS: dict[str, Any] = {
    "n_stages": 3,
    "features_per_stage": FEATURES,
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3,
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
ARCH_REQUIRES_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]
ARCH_CLASS = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def structure_intensity(name: str) -> float:
    """Mean phantom intensity of a structure: over [40, 1000], leaving air (~0) and tissue (~300) free."""
    names = list(get_task("total_mr").class_map.values())
    idx = names.index(name)
    # interleave the structures of part 850 (first 29) and 851 (last 21) along the intensity axis
    order = sorted(range(len(names)), key=lambda i: (i * 37) % len(names))
    rank = order.index(idx)
    levels = [v for v in np.linspace(40.0, 1000.0, 60) if abs(v - 300.0) > 40.0]
    return float(levels[rank])


def plans_json(model: PartModel) -> dict[str, Any]:
    spacing = [model.spacing_mm] * 3
    return {
        "dataset_name": model.dataset_folder_name,
        "plans_name": model.plans,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [96, 96, 96],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            model.configuration: {
                "data_identifier": f"{model.plans}_{model.configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(PATCH),
                "median_image_size_in_voxels": [96, 96, 96],
                "spacing": spacing,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {
                    "is_seg": False,
                    "order": 3,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_seg_kwargs": {
                    "is_seg": True,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": 1,
                    "order_z": 0,
                    "force_separate_z": None,
                },
                "architecture": {
                    "network_class_name": ARCH_CLASS,
                    "arch_kwargs": ARCH_KWARGS,
                    "_kw_requires_import": ARCH_REQUIRES_IMPORT,
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 1200.0,
                "mean": 400.0,
                "median": 380.0,
                "min": 0.0,
                "percentile_00_5": 5.0,
                "percentile_99_5": 1100.0,
                "std": 200.0,
            }
        },
    }


def dataset_json(model: PartModel, n_training: int) -> dict[str, Any]:
    labels = {"background": 0}
    labels.update({name: value for value, name in sorted(model.class_map.items())})
    return {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": n_training,
        "file_ending": ".nii.gz",
        "name": model.dataset_folder_name,
        "description": "Tiny SegNode test model trained on synthetic MR-like phantoms "
        "(scripts/train_tiny_models.py); NOT a clinical model.",
    }


def phantom(
    rng: np.random.Generator, model: PartModel, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic MR-like image and its label map for ``model``'s labels."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float32) / 2
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    # body: a large ellipsoid of generic tissue (label 0) over dark air
    radii = centre * rng.uniform(0.75, 1.1, 3)
    body = (
        ((grid - (centre + rng.normal(0, 2, 3))[:, None, None, None]) / radii[:, None, None, None]) ** 2
    ).sum(0) <= 1.0
    image[body] = rng.uniform(260, 340)
    items = list(model.class_map.items())
    n_structures = int(rng.integers(5, 12))
    for _ in range(n_structures):
        value, name = items[int(rng.integers(len(items)))]
        c = rng.uniform(0.15, 0.85, 3) * np.array(shape)
        r = rng.uniform(3.0, 9.0, 3)
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
        d = np.einsum("ij,jxyz->ixyz", rot, grid - c[:, None, None, None].astype(np.float32))
        inside = ((d / r[:, None, None, None]) ** 2).sum(0) <= 1.0
        image[inside] = structure_intensity(name) * rng.uniform(0.93, 1.07)
        labels[inside] = value
    # smooth texture, bias field and noise
    image = ndimage.gaussian_filter(image, 0.7)
    bias = ndimage.zoom(rng.uniform(0.85, 1.15, (3, 3, 3)), np.array(shape) / 3, order=1)[
        : shape[0], : shape[1], : shape[2]
    ]
    image = image * bias * rng.uniform(0.5, 2.0)
    image = np.abs(image + rng.normal(0, rng.uniform(5, 25), shape)).astype(np.float32)
    return image, labels


def zscore(image: np.ndarray) -> np.ndarray:
    """nnU-Net's ZScoreNormalization without mask: whole-image mean and std."""
    out = image.astype(np.float32)
    return (out - out.mean()) / max(float(out.std()), 1e-8)


def build_network(num_classes: int) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    net: torch.nn.Module = get_network_from_plans(
        ARCH_CLASS, ARCH_KWARGS, ARCH_REQUIRES_IMPORT, 1, num_classes, allow_init=True, deep_supervision=False
    )
    return net


def train(model: PartModel, iterations: int, rng: np.random.Generator) -> torch.nn.Module:
    num_classes = model.num_labels + 1
    net = build_network(num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=iterations, power=0.9)
    pool = []
    for _ in range(24):
        img, lab = phantom(rng, model, (48, 48, 48))
        pool.append((zscore(img), lab))
    net.train()
    start = time.time()
    for it in range(iterations):
        if it and it % 40 == 0:  # refresh a part of the pool to see more phantoms
            img, lab = phantom(rng, model, (48, 48, 48))
            pool[int(rng.integers(len(pool)))] = (zscore(img), lab)
        xs, ys = [], []
        for _ in range(2):
            img, lab = pool[int(rng.integers(len(pool)))]
            o = [int(rng.integers(0, s - p + 1)) for s, p in zip(img.shape, PATCH, strict=True)]
            sl = tuple(slice(a, a + p) for a, p in zip(o, PATCH, strict=True))
            xs.append(img[sl][None])
            ys.append(lab[sl])
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys).astype(np.int64))
        logits = net(x)
        ce = torch.nn.functional.cross_entropy(logits, y)
        prob = logits.softmax(1)
        onehot = torch.nn.functional.one_hot(y, num_classes).permute(0, 4, 1, 2, 3).float()
        inter = (prob * onehot).sum((0, 2, 3, 4))
        denom = prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4))
        present = onehot.sum((0, 2, 3, 4)) > 0
        dice = (2 * inter[present] + 1e-5) / (denom[present] + 1e-5)
        loss = ce + (1 - dice.mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0 or it == iterations - 1:
            print(f"  {model.dataset_id} it {it:4d} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    net.eval()
    return net


def write_model(model: PartModel, net: torch.nn.Module, out: Path, iterations: int) -> Path:
    folder = model.model_dir(out)
    (folder / f"fold_{model.fold}").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans_json(model), indent=1) + "\n")
    (folder / "dataset.json").write_text(json.dumps(dataset_json(model, iterations), indent=1) + "\n")
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    checkpoint = {
        "network_weights": state,
        "init_args": {
            "plans": plans_json(model),
            "configuration": model.configuration,
            "fold": model.fold,
            "dataset_json": dataset_json(model, iterations),
            "device": "cpu",
        },
        "trainer_name": model.trainer,
        "inference_allowed_mirroring_axes": None,
        "current_epoch": iterations,
    }
    path = model.checkpoint_path(out)
    torch.save(checkpoint, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/models"))
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--models", default="850,851,852")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    for dataset_id in (int(x) for x in args.models.split(",")):
        model = get_part_model(dataset_id)
        rng = np.random.default_rng(SEED + dataset_id)
        print(f"training {model.dataset_folder_name} ({model.num_labels} labels)")
        net = train(model, args.iterations, rng)
        path = write_model(model, net, args.out, args.iterations)
        print(f"  wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
