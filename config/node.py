"""Configuration of the receiving node: network, AE titles, storage, completion, database, audit."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class NetworkConfig(BaseModel):
    """Where and how the SCP listens."""

    model_config = ConfigDict(extra="forbid")

    bind_address: str = Field(default="0.0.0.0", description="Address the SCP listens on.")
    port: int = Field(default=11112, ge=0, le=65535, description="TCP port (0: an ephemeral port, for tests).")


class StorageConfig(BaseModel):
    """The spool where received instances are kept."""

    model_config = ConfigDict(extra="forbid")

    spool_dir: Path = Field(default=Path("spool"), description="Folder of received instances.")


class DatabaseConfig(BaseModel):
    """The audit database."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="sqlite:///segnode.db", description="SQLAlchemy URL of the audit database.")
