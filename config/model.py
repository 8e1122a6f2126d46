"""The whole configuration: one typed model composed of the sections of each package."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from config.inference import InferenceConfig
from config.node import (
    AcceptConfig,
    CompletionConfig,
    DatabaseConfig,
    NetworkConfig,
    NodeConfig,
    PrivacyConfig,
    RetentionConfig,
    StorageConfig,
)
from config.routing import DestinationConfig


class SegNodeConfig(BaseModel):
    """Root of the YAML file. Every key has exactly one default, defined in its section model."""

    model_config = ConfigDict(extra="forbid")

    node: NodeConfig = Field(default_factory=NodeConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    accept: AcceptConfig = Field(default_factory=AcceptConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    destinations: dict[str, DestinationConfig] = Field(
        default_factory=dict, description="Named DICOM destinations that results are sent to."
    )

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the configuration in force, recorded with every audit event."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
