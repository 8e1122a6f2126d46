"""The whole configuration: one typed model composed of the sections of each package."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from config.inference import InferenceConfig
from config.node import DatabaseConfig, NetworkConfig, StorageConfig
from config.routing import DestinationConfig


class SegNodeConfig(BaseModel):
    """Root of the YAML file. Every key has exactly one default, defined in its section model."""

    model_config = ConfigDict(extra="forbid")

    network: NetworkConfig = Field(default_factory=NetworkConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    destinations: dict[str, DestinationConfig] = Field(
        default_factory=dict, description="Named DICOM destinations that results are sent to."
    )
