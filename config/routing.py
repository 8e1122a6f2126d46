"""Configuration of routes, destinations and sending (owned by the results work)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DestinationConfig(BaseModel):
    """A DICOM peer that receives SegNode's results by C-STORE."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(description="Called AE title of the destination (1-16 characters).")
    host: str = Field(description="Host name or IP address.")
    port: int = Field(ge=1, le=65535, description="TCP port.")
