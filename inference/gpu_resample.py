"""The two resampling steps of :mod:`inference.preprocess` in torch, for a CUDA device.

Both reproduce ``scipy.ndimage.zoom`` (``mode="nearest"``, ``grid_mode=False``) arithmetic in float64:
output index ``k`` samples input coordinate ``x = k * (n_in - 1) / (n_out - 1)``; order 1 weighs the two
neighbours ``floor(x)`` and ``floor(x) + 1`` (clamped to the edge) with ``w0 = 1 - (x - floor(x))`` and
``1 - w0`` and sums the 8 corner products ``v * w_0 * w_1 * w_2`` in scipy's order (last axis
fastest); order 0 takes the neighbour ``round half away from zero`` of ``x`` clamped to the edge. Every
operation is a separate torch kernel (no fused multiply-add), so CPU and CUDA give the same bits.
torch is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    #: A device as torch accepts it (``torch.device("cuda:0")`` or ``"cuda"``).
    Device = torch.device | str

T = TypeVar("T", bound=np.generic)


def _coords(n_in: int, n_out: int, device: Device) -> torch.Tensor:
    import torch

    k = torch.arange(n_out, dtype=torch.float64, device=device)
    if n_out > 1:
        factor = torch.tensor((n_in - 1) / (n_out - 1), dtype=torch.float64, device=device)
        return k * factor
    return torch.zeros_like(k)


def _linear_axis(
    n_in: int, n_out: int, device: Device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    x = _coords(n_in, n_out, device)
    lo = torch.floor(x)
    w0 = 1.0 - (x - lo)
    w1 = 1.0 - w0  # scipy makes the weights add up to exactly 1 this way
    i0 = lo.to(torch.int64).clamp(0, n_in - 1)
    i1 = (i0 + 1).clamp(0, n_in - 1)
    return i0, i1, w0, w1


def zoom_linear(data: np.ndarray, out_shape: tuple[int, int, int], device: Device) -> npt.NDArray[np.int32]:
    """Order-1 zoom of ``data`` (3D) to ``out_shape`` on ``device``, cast to int32 (truncation)."""
    import torch

    src = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float64), device=device)
    axes = [_linear_axis(n_in, n_out, device) for n_in, n_out in zip(data.shape, out_shape, strict=True)]
    total = torch.zeros(out_shape, dtype=torch.float64, device=device)
    # corners in scipy's order: the last axis varies fastest
    for c0 in (0, 1):
        idx0, w0 = axes[0][c0], axes[0][2 + c0]
        plane = src.index_select(0, idx0)
        for c1 in (0, 1):
            idx1, w1 = axes[1][c1], axes[1][2 + c1]
            row = plane.index_select(1, idx1)
            for c2 in (0, 1):
                idx2, w2 = axes[2][c2], axes[2][2 + c2]
                v = row.index_select(2, idx2)
                term = v * w0[:, None, None]
                term = term * w1[None, :, None]
                term = term * w2[None, None, :]
                total = total + term
    out: npt.NDArray[np.int32] = total.to(torch.int32).cpu().numpy()
    return out


def zoom_nearest(labels: npt.NDArray[T], out_shape: tuple[int, int, int], device: Device) -> npt.NDArray[T]:
    """Order-0 zoom of a label map to ``out_shape`` on ``device``."""
    import torch

    if tuple(labels.shape) == tuple(out_shape):
        return labels
    src = torch.as_tensor(np.ascontiguousarray(labels), device=device)
    for axis, (n_in, n_out) in enumerate(zip(labels.shape, out_shape, strict=True)):
        x = _coords(n_in, n_out, device)
        idx = torch.floor(x + 0.5).to(torch.int64).clamp(0, n_in - 1)
        src = src.index_select(axis, idx)
    out: npt.NDArray[T] = src.cpu().numpy()
    return out
