"""The part networks compiled by ``torch.compile`` for the CPU (``inference.cpu_compile``).

On the CPU the forward pass of a full-size network is the whole cost of a series. TorchInductor with
*freezing* folds the weights into the graph, pre-packs them once in oneDNN's blocked layout and fuses the
instance norm and leaky ReLU into generated C++ kernels, so each tile no longer reorders the weights and
activations between layouts. On a 2-core AVX-512 machine one 112x160x128 tile of model 850 took 3.0 s
compiled against 5.5 s eager (same process, alternating). The arithmetic stays fp32; only the order of some
additions changes (largest logit difference measured ~5e-5), so labels differ only where two classes are
tied to that precision.

Compiling costs time once per network and process (10-60 s; TorchInductor's on-disk cache makes later
processes quicker), so it pays back on a warm engine and only for networks whose forward is heavy: ``auto``
compiles networks of at least :data:`AUTO_MIN_PARAMETERS` parameters (every full-size TotalSegmentator
network) and leaves small ones eager. The compile and a first forward on a zero tile run when the predictor
is built, i.e. in the engine's warm-up, so no series waits for it. Frozen weights cannot be swapped, so an
ensemble of folds (nnU-Net reloads the weights per fold) is never compiled. A failure (no C++ compiler,
an inductor error) is logged and the network runs eagerly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from inference.nnunet_models import Predictor
    from inference.sliding import Precision

logger = logging.getLogger(__name__)

CompileSetting = Literal["auto", "on", "off"]

#: ``auto`` compiles networks with at least this many parameters (the full-size networks have 16-31 M; the
#: project's test networks a few thousand, where compiling would cost more than it saves).
AUTO_MIN_PARAMETERS = 1_000_000


def parameter_count(network: torch.nn.Module) -> int:
    return sum(int(p.numel()) for p in network.parameters())


def wants_compile(predictor: Predictor, device: torch.device, setting: CompileSetting) -> bool:
    """Whether ``setting`` compiles this predictor's network on ``device`` (CPU only, one set of weights)."""
    if setting == "off" or device.type != "cpu" or len(predictor.list_of_parameters) != 1:
        return False
    return setting == "on" or parameter_count(predictor.network) >= AUTO_MIN_PARAMETERS


def compile_network(predictor: Predictor, device: torch.device, precision: Precision) -> bool:
    """Replace ``predictor.network`` by its compiled form, compiled now on a zero tile; False if it failed.

    The compiled network is used by :func:`inference.sliding.sliding_window_labels`, which runs it under
    ``torch.inference_mode`` and the precision's autocast, as the warm-up forward here does (a different
    context would compile once more on first use).
    """
    import torch
    import torch._inductor.config as inductor_config

    from inference.sliding import autocast_for

    network = predictor.network
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    first = next((m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))), None)
    channels = int(first.in_channels) if first is not None else 1
    start = time.perf_counter()
    try:
        inductor_config.freezing = True
        compiled = cast("torch.nn.Module", torch.compile(network.eval(), dynamic=False))
        with torch.inference_mode(), autocast_for(device, precision):
            compiled(torch.zeros((1, channels, *patch), dtype=torch.float32, device=device))
    except Exception as exc:  # noqa: BLE001 - any compiler or inductor failure: the network stays eager
        logger.warning(
            "torch.compile of the network failed, running it eagerly (%s: %s)",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return False
    predictor.network = compiled
    seconds = time.perf_counter() - start
    logger.info("compiled the network (patch %s) in %.1fs", "x".join(map(str, patch)), seconds)
    compile_slab_kernels(int(predictor.label_manager.num_segmentation_heads), patch)
    return True


# -- the sliding window's own work per tile and per slab ------------------------------------------------


def _accumulate(
    logits: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, gaussian: torch.Tensor
) -> None:
    """The tile's logits weighted by the Gaussian, added into the fp16 accumulators (one pass)."""
    logits += out * gaussian
    weights += gaussian


def _finish(part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax over the classes (first maximum) and whether any logit is infinite, in one pass."""
    import torch

    return part.argmax(0), torch.isinf(part).any()


@dataclass(frozen=True)
class SlabKernels:
    """:func:`_accumulate` and :func:`_finish` compiled for the CPU (bit-identical to the eager operations:
    fp32 products and sums rounded once to fp16, the argmax of the same fp16 values)."""

    accumulate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
    finish: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


_slab_kernels: dict[tuple[int, tuple[int, ...]], SlabKernels] = {}
_slab_lock = threading.Lock()


def compile_slab_kernels(classes: int, patch: tuple[int, ...]) -> bool:
    """Compile (once per process and network shape, with dynamic shapes) the sliding window's own work.

    Eagerly the fp16 argmax over the classes of a slab of 112 planes takes 1.5 s on two cores, the
    infinity check 0.5 s and the weighted accumulation 0.2-0.3 s per tile; compiled 0.1-0.5 s per slab and
    0.1 s per tile. The warm-up calls have the shapes and views of a series (:func:`inference.sliding.
    accumulators`, a tile cropped to an image shorter than the patch, whole tiles at the edge and inside, the
    last slab a view of fewer planes), so that no series compiles them again.
    """
    import torch

    key = (classes, tuple(patch))
    with _slab_lock:
        if key in _slab_kernels:
            return True
        start = time.perf_counter()
        try:
            accumulate = torch.compile(_accumulate, dynamic=True)
            finish = torch.compile(_finish, dynamic=True)
            with torch.inference_mode():
                for tile, window, corners in _warm_up_cases(classes, patch):
                    _warm_up(accumulate, finish, classes, tile, window, corners)
        except Exception as exc:  # noqa: BLE001 - any compiler or inductor failure: eager operations
            logger.warning(
                "torch.compile of the sliding-window kernels failed, running them eagerly (%s)", exc
            )
            return False
        _slab_kernels[key] = SlabKernels(accumulate=accumulate, finish=finish)
        logger.info(
            "compiled the sliding-window kernels (%d classes) in %.1fs", classes, time.perf_counter() - start
        )
        return True


def _warm_up_cases(
    classes: int, patch: tuple[int, ...]
) -> list[tuple[tuple[int, ...], tuple[int, int, int], tuple[tuple[int, int], ...]]]:
    """(tile, accumulator window, tile corners) of the warm-up calls: first a tile cropped to an image
    shorter than the patch on every axis, its sizes all different from each other and from the classes
    (dynamo ties equal sizes to one symbol, "duck sizing", and compiles again when a series unties them), in
    a window of its size; then a whole tile at the edge and inside a wider window."""
    sizes: list[int] = []
    for n in patch:
        size = max(n - 1, 2)
        while size > 2 and (size in sizes or size == classes):
            size -= 1
        sizes.append(size)
    cropped = tuple(sizes)
    wide = (patch[0], patch[1] + 17, patch[2] + 9)
    return [
        (cropped, (cropped[0], cropped[1], cropped[2]), ((0, 0),)),
        (tuple(patch), wide, ((0, 0), (17, 9))),
    ]


def _warm_up(
    accumulate: Callable[..., None],
    finish: Callable[..., Any],
    classes: int,
    tile: tuple[int, ...],
    window: tuple[int, int, int],
    corners: tuple[tuple[int, int], ...],
) -> None:
    """The kernels once on accumulators as :func:`inference.sliding.sliding_window_labels` makes them."""
    import torch

    from inference.sliding import accumulators

    with torch.inference_mode(False):  # made outside inference mode, as the sliding window makes them
        gaussian = torch.ones(tile, dtype=torch.half)  # nnU-Net's compute_gaussian is fp16
        logits, weights = accumulators(classes, window, torch.device("cpu"))
    out = torch.zeros((classes, *tile))
    for y, x in corners:
        ys, xs = slice(y, y + tile[1]), slice(x, x + tile[2])
        accumulate(logits[:, :, ys, xs], weights[:, ys, xs], out, gaussian)
    finish(logits)
    finish(logits[:, : max(2, window[0] // 2)])


def slab_kernels(classes: int, patch: tuple[int, ...], device: torch.device) -> SlabKernels | None:
    """The compiled kernels for this network shape on the CPU; ``None``: the eager operations."""
    if device.type != "cpu":
        return None
    return _slab_kernels.get((classes, tuple(patch)))
