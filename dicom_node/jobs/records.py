"""What the stages of a job hand on: the routed plan, the converted volumes (in memory), and the records
of saved label maps, encoded SEG objects and the objects derived beside them kept in ``Job.outputs``
(JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from config.routing import RouteAction
from conversion.volume import Volume
from dicom_node.jobs.store import JobStore


@dataclass(frozen=True)
class JobPlan:
    """A routed job: the rule whose action it carries out."""

    job_id: int
    series_instance_uid: str
    study_instance_uid: str
    route: str
    action: RouteAction


@dataclass
class Converted:
    """The result of conversion, handed in memory to the next stage."""

    plan: JobPlan
    volumes: list[Volume]


class JsonRecord:
    """A record kept as a JSON object in ``Job.outputs``: its fields are the object's keys."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        return cls(**dict(data))


@dataclass(frozen=True)
class LabelMapRecord(JsonRecord):
    """One saved label map (``Job.outputs['label_maps']``)."""

    file: str
    stack_index: int
    stack_label: str
    task: str
    mode: str
    fast: bool
    roi_subset: list[str] | None
    class_map: dict[str, str]
    models: list[dict[str, Any]]
    device: str
    timings: dict[str, float]


@dataclass(frozen=True)
class SegOutput(JsonRecord):
    """One encoded SEG in the outbox and the destinations it goes to (``Job.outputs['seg']``)."""

    file: str
    sop_instance_uid: str
    series_instance_uid: str
    segmentation_type: str
    destinations: list[str]
    task: str
    stack_index: int
    label_map: str
    number_of_frames: int
    segments: int
    validation_warnings: int = 0
    #: Seconds spent encoding (highdicom) and validating (dciodvfy) this object.
    encode_s: float = 0.0
    validation_s: float = 0.0


@dataclass(frozen=True)
class DerivedOutput(JsonRecord):
    """One object beside the SEG in the outbox (``Job.outputs['derived']``): the volumetry SR, the overlay
    series (one file per image) or the RTSTRUCT of a stack, and the destinations it goes to."""

    kind: str
    files: list[str]
    series_instance_uid: str
    destinations: list[str]
    task: str
    stack_index: int
    label_map: str
    #: SOP Instance UID of the SEG the object was derived from (the SR references it).
    seg_sop_instance_uid: str
    validation_warnings: int = 0
    encode_s: float = 0.0
    validation_s: float = 0.0
    #: Why the object could not be made (reason code and message; no files then): its deliveries fail
    #: with that reason while the other kinds go on.
    reason: str | None = None
    error: str | None = None


def derived_outputs(jobs: JobStore, job_id: int) -> list[DerivedOutput]:
    """The SR, overlay and RTSTRUCT objects the encoding stage wrote for a job."""
    return [DerivedOutput.of(o) for o in jobs.outputs(job_id).get("derived", [])]


def label_maps(jobs: JobStore, job_id: int) -> list[LabelMapRecord]:
    """The label maps the segmenting stage saved for a job."""
    return [LabelMapRecord.of(r) for r in jobs.outputs(job_id).get("label_maps", [])]


def seg_outputs(jobs: JobStore, job_id: int) -> list[SegOutput]:
    """The SEG objects the encoding stage wrote for a job."""
    return [SegOutput.of(o) for o in jobs.outputs(job_id).get("seg", [])]
