"""The shapes of the API's answers, as the OpenAPI schema shows them (answers are filtered through them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class JobRow(BaseModel):
    """A job in a list."""

    id: int
    state: str = Field(description="queued, converting, segmenting, encoding, sending, done, failed, ...")
    failed_stage: str | None = Field(description="The stage a failed job stopped in.")
    reason: str | None = Field(description="Stable reason code (failure, cancellation, supersession).")
    detail: str | None = Field(description="What happened, in words.")
    route: str | None
    series_instance_uid: str
    study_instance_uid: str
    superseded_by: int | None
    created_at: datetime
    updated_at: datetime
    stage_seconds: dict[str, float] = Field(description="Seconds of the latest run of each stage.")


class DeliveryRow(BaseModel):
    id: int
    job_id: int
    destination: str
    kind: str = Field(description="The objects delivered: seg, sr, overlay or rtstruct (each on its own).")
    state: str = Field(description="pending, delivered, failed or cancelled")
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When a waiting delivery is tried again.")
    last_outcome: str | None
    last_status: str | None = Field(description="What the destination answered.")
    warning: str | None


class EventRow(BaseModel):
    id: int
    at: datetime
    what: str
    outcome: str
    reason: str | None
    detail: str | None


class JobDetail(JobRow):
    """One job with everything about it."""

    worker: str | None = Field(
        default=None, description="Cluster: the worker (host:pid) holding the stage, or the last one."
    )
    lease_expires_at: datetime | None = Field(default=None, description="Cluster: until when it holds it.")
    stage_timings: dict[str, Any] = Field(description="The latest run of each stage: start, end, seconds.")
    stage_runs: list[dict[str, Any]] = Field(description="Every run of every stage, in order.")
    outputs: dict[str, Any] = Field(description="Label maps and SEG objects, and where each goes.")
    deliveries: list[DeliveryRow]
    events: list[EventRow] = Field(description="The job's audit trail.")


class ResultRow(BaseModel):
    """The volume of one structure in one stack (``segnode results``; the volumetry SR's numbers)."""

    series_instance_uid: str
    stack: str = Field(description="Stack label of a multi-stack series (empty for a single stack).")
    task: str
    label: int = Field(description="The model's label value.")
    structure: str = Field(description="Catalog name, e.g. kidney_left.")
    display_name: str
    voxels: int
    volume_ml: float = Field(description="Voxel count x voxel volume, ml.")
    touches_border: bool = Field(description="On the stack's border: the volume is a lower bound.")
    cutoff_ml: float | None = Field(description="Plausibility cut-off of the structure (ml), if it has one.")
    below_cutoff: bool = Field(description="Below the cut-off: likely a failed segmentation.")


class ActionResult(BaseModel):
    job_id: int
    action: str
    message: str
    state: str = Field(description="The job's state after the action.")


class ReadyCheck(BaseModel, extra="allow"):
    name: str = Field(description="database, spool, engine or destinations")
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: str = Field(description="ready, degraded (a destination does not answer) or not_ready (503)")
    checks: list[ReadyCheck]


class DestinationHealthModel(BaseModel):
    state: str = Field(description="up, down or unknown (not tried yet)")
    since: datetime | None = None
    down_for_s: float = 0.0
    last_check_at: datetime | None = None
    last_outcome: str | None = None
    last_detail: str | None = None
    source: str | None = Field(default=None, description="send or echo: what told the last outcome")


class DestinationRow(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool
    health: DestinationHealthModel
    pending_deliveries: int = Field(description="Deliveries waiting (due now or in back-off).")
    next_attempt_at: datetime | None = Field(description="The earliest next attempt (the back-off).")
    failed_deliveries: int = Field(description="Failed deliveries of jobs still failed.")
    last_delivered_at: datetime | None
    waiting: list[DeliveryRow] = Field(description="Deliveries in back-off (20 at most).")
