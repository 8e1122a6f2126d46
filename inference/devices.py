"""The torch device inference runs on, from the configuration's ``inference.device``. torch is imported
lazily (in the function), so importing this module is cheap."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inference.errors import DeviceUnavailableError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["resolve_device"]


def resolve_device(spec: str) -> torch.device:
    """``auto | cuda | cuda:N | cpu`` -> ``torch.device``.

    :class:`DeviceUnavailableError` where the device asked for is not there."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = 0
        if spec.startswith("cuda:"):
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise DeviceUnavailableError(
                    f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N"
                ) from None
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {spec!r} asked for, but no CUDA device is available")
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device(f"cuda:{index}")
    raise DeviceUnavailableError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")
