"""Configuration of the inference engine and the model weights (see ``inference/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InferenceConfig(BaseModel):
    """Where the model weights live and how the engine runs them."""

    model_config = ConfigDict(extra="forbid")

    weights_dir: Path | None = Field(
        default=None,
        description="Folder with the nnU-Net weights (TotalSegmentator layout). "
        "Unset: $TOTALSEG_WEIGHTS_PATH, else ~/.totalsegmentator/nnunet/results.",
    )
    weights_base_url: str | None = Field(
        default=None,
        description="Where `segnode models download` fetches open weights: "
        "<base>/<release>/<DatasetNNN_Name>.zip (e.g. a hospital mirror of the release files). "
        "Unset: TotalSegmentator's official GitHub release.",
    )
    license_server_url: str | None = Field(
        default=None,
        description="Licence server for licensed weights (POST <url>/download_weights). "
        "Unset: TotalSegmentator's official licence server.",
    )
    license_key: str | None = Field(
        default=None,
        description="TotalSegmentator licence number for licensed tasks; `--license-key` overrides it.",
    )
    device: str = Field(
        default="auto",
        description="Where the models run: auto (the first CUDA GPU when there is one, else the CPU) | "
        "cuda | cuda:N | cpu. A CUDA device that is not there fails with reason device_unavailable.",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads torch uses for inference on the CPU. Unset: all cores (as TotalSegmentator).",
    )
    cpu_interop_threads: int | None = Field(
        default=None,
        ge=1,
        description="Threads torch uses to run independent operations in parallel on the CPU (set once per "
        "process, before the first model runs). Unset: torch's default (the number of cores).",
    )
    cpu_precision: Literal["fp32", "bf16"] = Field(
        default="fp32",
        description="Arithmetic of the network on the CPU: fp32 (as TotalSegmentator) | bf16 (autocast to "
        "bfloat16, about 2x faster on CPUs with AVX-512 BF16 or AMX; labels may differ from fp32 where two "
        "classes are nearly tied). The GPU always runs nnU-Net's fp16 autocast.",
    )
    cpu_memory: Literal["hugepages", "reuse", "system"] = Field(
        default="hugepages",
        description="Host memory of the process that runs the models on the CPU: hugepages (torch's tensors "
        "of 2 MB and more on transparent huge pages: 2 MB page faults instead of 4 kB ones, about 1.2x "
        "faster per full-size tile, resident size unchanged) | reuse (glibc: one malloc arena and no mmap "
        "per block, so a tile reuses the pages the previous one freed with no page fault, about 1.35x faster "
        "per tile, but the peak resident size of a series about 1 GB higher; given back after each series) "
        "| system (glibc's and torch's defaults). Applied when segnode serve, worker or segment starts.",
    )
    cpu_compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Compile the networks for the CPU with torch.compile (TorchInductor, weights frozen into "
        "the graph; needs a C++ compiler): auto (networks of at least 1 M parameters, i.e. every full-size "
        "model; compiled once per process in the warm-up, then about 1.8x faster per tile, still fp32) | on "
        "| off. A failed compile is logged and the network runs uncompiled.",
    )
    gpu_oom_fallback: bool = Field(
        default=True,
        description="On GPU out-of-memory, retry the part model with its logits kept on the CPU, then on the "
        "CPU; each retry is recorded in the result's events. False: fail with reason out_of_memory.",
    )
    max_voxels: int = Field(
        default=400_000_000,
        ge=1,
        description="Largest image the engine accepts, in voxels at the model spacing (before the triple "
        "split TotalSegmentator applies above 512x512x900); larger stacks fail with reason input_too_large.",
    )
    default_task: Literal["total_mr"] | str = Field(
        default="total_mr", description="Task run when a route names none."
    )
