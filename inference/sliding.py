"""nnU-Net's sliding-window prediction with the logits held for one slab of tiles at a time.

nnunetv2's ``predict_single_npy_array`` keeps the logits of the whole image (classes x voxels, fp16) and
then takes their argmax on the CPU in numpy's emulated float16: for a 512x512x800 series at 1.5 mm that is
several GB held for the whole prediction and a slow argmax. Here the same computation runs slab by slab
along the first axis of nnU-Net's grid: the tiles are visited in nnU-Net's order (first axis outermost), so
once every tile starting at one position of the first axis has been added, the voxels before the next
starting position receive no more contributions; their logits are divided by the Gaussian weights and
reduced to labels, and only the logits of the next ``patch[0]`` planes are kept.

The arithmetic per voxel is nnU-Net's (2.8): tile logits times the Gaussian (``compute_gaussian``, sigma 1/8,
scale 10, fp16) added into fp16 accumulators in the same order, divided in fp16, argmax (first maximum on
ties). Preprocessing (crop to non-zero, normalisation) and the return to the uncropped grid are nnU-Net's.
The network runs with the weights :func:`inference.nnunet_models.build_predictor` loaded into it (one fold;
an ensemble of folds takes nnU-Net's path).
Where nnU-Net would resample the logits (the image is not already at the plans' spacing, which the engine
ensures it is), nnU-Net's own whole-image path runs instead.

``precision`` ``bf16`` runs the network forward under CPU autocast to bfloat16 (AVX-512 BF16 / AMX make it
about twice as fast); the tile logits are cast back to fp32 before the weighting. On CUDA the forward runs
under fp16 autocast, as nnU-Net does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from inference.nnunet_models import Predictor

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]


def autocast_for(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", enabled=True)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tile_starts(shape: tuple[int, ...], patch: tuple[int, ...], step: float) -> list[list[int]]:
    """nnU-Net's tile positions per axis (``compute_steps_for_sliding_window``)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    starts: list[list[int]] = compute_steps_for_sliding_window(shape, patch, step)
    return starts


def _slabs(starts0: list[int], patch0: int, length: int) -> Iterator[tuple[int, int, int]]:
    """(tile start, tile end, first plane not final after this slab) per start on the first axis."""
    for index, start in enumerate(starts0):
        final = starts0[index + 1] if index + 1 < len(starts0) else length
        yield start, start + patch0, final


def sliding_window_labels(
    predictor: Predictor, data: torch.Tensor, precision: Precision = "fp32"
) -> npt.NDArray[np.uint8]:
    """Labels (argmax of the Gaussian-weighted logits) of a preprocessed image ``data`` (c, z, y, x)."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from inference.compiled import slab_kernels

    device: torch.device = predictor.device
    on_device = device.type == "cuda" and predictor.perform_everything_on_device
    results = device if on_device else torch.device("cpu")
    network = predictor.network.to(device)
    network.eval()
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    classes = int(predictor.label_manager.num_segmentation_heads)
    padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    padded = padded.to(results)
    shape = tuple(int(n) for n in padded.shape[1:])
    starts = tile_starts(shape, patch, float(predictor.tile_step_size))
    region = Region.of(revert[1:], shape)
    gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=results)
    gaussian = region.crop(gaussian)
    labels = np.zeros(region.size, dtype=np.uint8)
    logits, weights = accumulators(classes, (min(patch[0], region.size[0]), *region.size[1:]), results)
    base = 0  # plane of the image held in the first plane of the accumulators
    kernels = slab_kernels(classes, patch, results)  # compiled with the network (CPU), else None
    with torch.inference_mode(), autocast_for(device, precision):
        for start, end, final in _slabs(starts[0], patch[0], shape[0]):
            first, last = region.span(0, start, end)
            _shift(logits, weights, first - base)
            base = first
            zs = slice(first - base, last - base)
            for y in starts[1]:
                for x in starts[2]:
                    # a fresh contiguous tensor made in inference mode, as the warm-up's zero tile: a compiled
                    # network is specialised to its input's strides and kind, and a view of the image would
                    # compile it once more per series shape
                    tile = padded[:, start:end, y : y + patch[1], x : x + patch[2]][None]
                    tile = tile.to(device, copy=True, memory_format=torch.contiguous_format)
                    out = network(tile)[0]
                    if out.dtype == torch.bfloat16:
                        out = out.float()
                    out = region.crop(out.to(results), channels=True)
                    ys, xs = slice(*region.span(1, y, y + patch[1])), slice(*region.span(2, x, x + patch[2]))
                    if kernels is None:
                        out *= gaussian
                        logits[:, zs, ys, xs] += out
                        weights[zs, ys, xs] += gaussian
                    else:
                        kernels.accumulate(logits[:, zs, ys, xs], weights[zs, ys, xs], out, gaussian)
                    # the tile's logits (classes x patch in fp32: 275-357 MB at full size) go now, not when
                    # the next tile's forward pass has already allocated its own feature maps
                    del out, tile
            done = min(final - region.low[0], region.size[0]) - base
            part = logits[:, :done]
            torch.div(part, weights[:done], out=part)
            if kernels is None:
                best, infinite = part.argmax(0), torch.any(torch.isinf(part))
            else:
                best, infinite = kernels.finish(part)
            if infinite:
                raise RuntimeError("infinite logits in the sliding-window prediction (fp16 overflow)")
            labels[base : base + done] = best.to(torch.uint8).cpu().numpy()
    return labels


@dataclass(frozen=True)
class Region:
    """The image inside nnU-Net's padding (an axis shorter than the patch is padded to it, on both sides).

    Only the image's voxels are accumulated: on a padded axis the single tile's logits are cropped to the
    image, so the accumulators hold no padding (a series of 46 planes at 1.5 mm holds 46 planes of logits,
    not the patch's 112). Per voxel the sums are those of nnU-Net, which accumulates the padding too and
    drops it afterwards.
    """

    low: tuple[int, int, int]  # first image voxel per axis, in the padded grid
    size: tuple[int, int, int]  # image voxels per axis
    padded: tuple[bool, bool, bool]

    @classmethod
    def of(cls, revert: tuple[slice, ...], shape: tuple[int, ...]) -> Region:
        low = tuple(int(s.start or 0) for s in revert)
        stop = tuple(int(shape[a] if s.stop is None else s.stop) for a, s in enumerate(revert))
        size = tuple(b - a for a, b in zip(low, stop, strict=True))
        padded = tuple(n < shape[a] for a, n in enumerate(size))  # only an axis shorter than the patch
        return cls(low, size, padded)  # type: ignore[arg-type]

    def span(self, axis: int, start: int, end: int) -> tuple[int, int]:
        """Image voxels ``[first, last)`` that a tile covering ``[start, end)`` of the padded grid holds."""
        first = max(start - self.low[axis], 0)
        return first, min(end - self.low[axis], self.size[axis])

    def crop(self, tensor: torch.Tensor, channels: bool = False) -> torch.Tensor:
        """A tile-shaped tensor cropped to the image on the padded axes (a contiguous copy), else itself."""
        if not any(self.padded):
            return tensor
        inside = tuple(
            slice(lo, lo + n) if pad else slice(None)
            for lo, n, pad in zip(self.low, self.size, self.padded, strict=True)
        )
        return tensor[(slice(None), *inside) if channels else inside].contiguous()


def accumulators(
    classes: int, window: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed fp16 logits (classes, *window) and weights (*window): views inside buffers one voxel wider on
    each side of the last two axes, so that every tile's view and every slab's view has the same kind of
    strides and a nonzero offset whatever the series' shape (the compiled kernels of
    :mod:`inference.compiled` are specialised to that kind; a view at offset 0 or as wide as the patch would
    compile them again)."""
    import torch

    planes, rows, columns = window
    logits = torch.zeros((classes, planes, rows + 2, columns + 2), dtype=torch.half, device=device)
    weights = torch.zeros((planes, rows + 2, columns + 2), dtype=torch.half, device=device)
    return logits[:, :, 1:-1, 1:-1], weights[:, 1:-1, 1:-1]


def _shift(logits: torch.Tensor, weights: torch.Tensor, offset: int) -> None:
    """Move the accumulators ``offset`` planes forward: planes ``offset:`` to the front, the rest zeroed."""
    if offset <= 0:
        return
    keep = logits.shape[1] - offset
    if keep > 0:
        logits[:, :keep] = logits[:, offset:].clone()
        weights[:keep] = weights[offset:].clone()
    logits[:, max(keep, 0) :] = 0
    weights[max(keep, 0) :] = 0


def predict_labels_bounded(
    predictor: Predictor,
    data_xyz: np.ndarray,
    spacing_xyz: npt.NDArray[np.floating],
    precision: Precision = "fp32",
) -> npt.NDArray[np.uint8]:
    """:func:`inference.nnunet_models.predict_labels` with the logits of one slab of tiles at a time."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    from inference.nnunet_models import predict_labels

    image = np.ascontiguousarray(np.asarray(data_xyz).transpose(2, 1, 0)[None].astype(np.float32))
    props: dict[str, Any] = {"spacing": [float(s) for s in np.asarray(spacing_xyz, dtype=np.float64)[::-1]]}
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(
        image, None, props, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    )
    if tuple(props["shape_after_cropping_and_before_resampling"]) != tuple(data.shape[1:]):
        logger.info("image not at the model spacing: nnU-Net's whole-image path")
        return predict_labels(predictor, data_xyz, spacing_xyz)
    if len(predictor.list_of_parameters) != 1:  # an ensemble of folds: nnU-Net averages their logits
        return predict_labels(predictor, data_xyz, spacing_xyz)
    import torch

    del image
    seg = sliding_window_labels(predictor, torch.from_numpy(data), precision)
    del data
    full = np.zeros(props["shape_before_cropping"], dtype=np.uint8)
    full = insert_crop_into_image(full, seg, props["bbox_used_for_cropping"])
    full = full.transpose(predictor.plans_manager.transpose_backward)
    labels: npt.NDArray[np.uint8] = np.ascontiguousarray(full.transpose(2, 1, 0))
    return labels
