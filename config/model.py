"""The whole configuration: one typed model composed of the sections of each package."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.cluster import ClusterConfig, cluster_problems
from config.http import HttpConfig
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
from config.notifications import NotificationsConfig
from config.routing import (
    IGNORE,
    DefaultRoute,
    DestinationConfig,
    PipelineConfig,
    RouteRule,
    SegConfig,
    SendingConfig,
    routing_reference_problems,
)


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
    sending: SendingConfig = Field(default_factory=SendingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    seg: SegConfig = Field(default_factory=SegConfig)
    routes: list[RouteRule] = Field(
        default_factory=list, description="Ordered routing rules (see config/routing.py)."
    )
    default_route: DefaultRoute = Field(
        default=IGNORE, description="What happens to a series that no route matches: ignore, or an action."
    )
    http: HttpConfig = Field(default_factory=HttpConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    cluster: ClusterConfig | None = Field(
        default=None,
        description="Receivers and Celery workers on a broker (config/cluster.py); unset: the embedded node.",
    )

    @model_validator(mode="after")
    def _cross_section_references(self) -> SegNodeConfig:
        problems = routing_reference_problems(
            self.routes, self.default_route, self.destinations, [a.ae_title for a in self.node.ae_titles]
        )
        problems += cluster_problems(self)
        if problems:
            raise ValueError("\n".join(problems))  # one 'key.path: reason' per line (see config.loader)
        return self

    def config_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the configuration in force, recorded with every audit event."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
