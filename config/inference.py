"""Configuration of the inference engine (owned by the inference work; see ``inference/``)."""

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
    device: str = Field(default="auto", description="auto | cuda | cuda:N | cpu")
    default_task: Literal["total_mr"] | str = Field(
        default="total_mr", description="Task run when a route names none."
    )
