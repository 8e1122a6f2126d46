"""Build nnU-Net v2 predictors for part models once, and run them on arrays.

Predictors are built from the model folder exactly as
``nnUNetPredictor.initialize_from_trained_model_folder`` does (dataset.json, plans.json,
``fold_N/checkpoint_final.pth``; the network built by the trainer class named in the checkpoint), but
the trainer class is resolved from a table of the trainers TotalSegmentator's MRI models use before
falling back to nnU-Net's search of all trainer modules: that search imports every trainer module (slow,
and it fails where an optional dependency such as torchvision is broken). torch and nnunetv2 are imported
lazily.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

logger = logging.getLogger(__name__)

#: Trainer class name -> module that defines it (nnunetv2 2.5 - 2.8).
KNOWN_TRAINERS: dict[str, str] = {
    "nnUNetTrainer": "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnUNetTrainerNoMirroring": (
        "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring"
    ),
    "nnUNetTrainer_2000epochs_NoMirroring": (
        "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring"
    ),
    "nnUNetTrainer_4000epochs_NoMirroring": (
        "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring"
    ),
    "nnUNetTrainer_DASegOrd0": (
        "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDAOrd0"
    ),
    "nnUNetTrainer_DASegOrd0_NoMirroring": (
        "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDAOrd0"
    ),
}


class Predictor(Protocol):
    """What SegNode uses of nnunetv2's ``nnUNetPredictor`` (nnunetv2 ships no type information)."""

    #: Keep the logits on the device (``False``: sliding-window results gathered on the CPU).
    perform_everything_on_device: bool
    device: torch.device
    network: torch.nn.Module
    tile_step_size: float
    #: The weights of each fold (nnU-Net loads them into the network at each prediction).
    list_of_parameters: list[Any]
    #: nnU-Net's plans, configuration and label managers and the dataset.json (untyped in nnunetv2).
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict[str, Any]

    def predict_single_npy_array(
        self,
        input_image: npt.NDArray[np.float32],
        image_properties: dict[str, list[float]],
        segmentation_previous_stage: np.ndarray | None,
        output_file_truncated: str | None,
        save_or_return_probabilities: bool,
    ) -> np.ndarray: ...


class TrainerClass(Protocol):
    """What SegNode uses of an nnU-Net trainer class: building its network."""

    def build_network_architecture(
        self,
        plans_manager: object,
        configuration_manager: object,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module: ...


def trainer_class(name: str) -> TrainerClass:
    """The nnU-Net trainer class called ``name``."""
    module_name = KNOWN_TRAINERS.get(name)
    if module_name is not None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module = None
        if module is not None and hasattr(module, name):
            known: TrainerClass = getattr(module, name)
            return known
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    found: TrainerClass = recursive_find_trainer_class_by_name(name)
    return found


def build_predictor(model_dir: Path, fold: int, device: torch.device, tile_step_size: float) -> Predictor:
    """An ``nnUNetPredictor`` with the weights of ``model_dir/fold_<fold>`` loaded on ``device``.

    Settings as TotalSegmentator's: Gaussian weighting, no mirroring, everything on the device (CUDA).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((model_dir / "dataset.json").read_text(encoding="utf-8"))
    plans = json.loads((model_dir / "plans.json").read_text(encoding="utf-8"))
    plans_manager = PlansManager(plans)
    checkpoint = torch.load(
        model_dir / f"fold_{fold}" / "checkpoint_final.pth",
        map_location=torch.device("cpu"),
        weights_only=False,
    )
    trainer_name = checkpoint["trainer_name"]
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    network = trainer_class(trainer_name).build_network_architecture(
        plans_manager,
        configuration_manager,
        num_input_channels,
        label_manager.num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration_manager,
        [checkpoint["network_weights"]],
        dataset_json,
        trainer_name,
        checkpoint.get("inference_allowed_mirroring_axes"),
    )
    # nnU-Net loads the weights into the network at each prediction; SegNode's sliding window
    # (inference/sliding.py) runs the network directly, so they are loaded once here.
    predictor.network.load_state_dict(checkpoint["network_weights"])
    # nnU-Net's own whole-image path loads list_of_parameters into the network before predicting: the
    # network's state dict (tensors sharing the parameters' storage) instead of the checkpoint's copy
    predictor.list_of_parameters = [predictor.network.state_dict()]
    built: Predictor = predictor
    return built


def predict_labels(
    predictor: Predictor, data_xyz: np.ndarray, spacing_xyz: npt.NDArray[np.floating]
) -> npt.NDArray[np.uint8]:
    """Run ``predictor`` on a canonical image (x, y, z) and return its argmax label map (x, y, z), uint8.

    The image goes in as nnU-Net's NIfTI readers hand it over: axes reversed to (z, y, x), one channel,
    float32, spacing reversed; nnU-Net's own preprocessing (crop to non-zero, z-score, resampling to the
    plans' spacing where needed) and export (argmax, back into the uncropped shape) run unchanged.
    """
    image = np.ascontiguousarray(np.asarray(data_xyz).transpose(2, 1, 0)[None].astype(np.float32))
    props = {"spacing": [float(s) for s in np.asarray(spacing_xyz, dtype=np.float64)[::-1]]}
    seg = predictor.predict_single_npy_array(image, props, None, None, False)
    labels: npt.NDArray[np.uint8] = np.ascontiguousarray(np.asarray(seg).transpose(2, 1, 0)).astype(np.uint8)
    return labels
