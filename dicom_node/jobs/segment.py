"""The segmenting stage: each selected stack x task of a job through the warm engine; the label maps are
saved as ``.npy`` in the job's work folder (``<work_dir>/<job id>/``) and listed in ``Job.outputs``."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt

from config.errors import SegNodeError
from dicom_node.durable import write_npy
from dicom_node.jobs.context import PipelineContext, PipelineError
from dicom_node.jobs.records import Converted, LabelMapRecord
from inference.results import SegmentationResult


class WarmUp(StrEnum):
    """Where the engine's start stands: the models of ``inference.default_task`` loaded at start
    (``pipeline.warm_up``) or with the first series."""

    #: ``pipeline.warm_up: false``: the models load with the first series.
    lazy = "lazy"
    loading = "loading"
    loaded = "loaded"
    #: Loading at start failed (``Pipeline.warm_up_error`` says why); series still try.
    failed = "failed"


class EngineLike(Protocol):
    """The engine as the pipeline uses it: what the segmentation stage needs of
    :class:`inference.engine.Engine` (whose :meth:`~inference.engine.Engine.segment` documents the
    parameters, the result and the exceptions)."""

    def segment(
        self,
        voxels: np.ndarray,
        affine_lps: npt.NDArray[np.float64],
        task: str = ...,
        fast: bool = ...,
        fastest: bool = ...,
        roi_subset: Sequence[str] | None = ...,
    ) -> SegmentationResult: ...


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:40] or "task"


def segment_stage(ctx: PipelineContext, converted: Converted, engine: EngineLike) -> list[LabelMapRecord]:
    """Segment each selected stack with each task of the route; save the label maps and list them."""
    plan = converted.plan
    ctx.failpoints.pause("segmenting", plan.job_id)
    folder = ctx.work_dir(plan.job_id)
    records: list[LabelMapRecord] = []
    for index, volume in enumerate(converted.volumes):
        for task in plan.action.tasks:
            try:
                ctx.failpoints.before_prediction(plan.series_instance_uid)
                result = engine.segment(
                    volume.voxels,
                    volume.affine,
                    task=task.name,
                    fast=task.fast,
                    roi_subset=task.roi_subset,
                )
            except SegNodeError:
                raise
            except Exception as exc:  # torch/CUDA errors: the job fails with a stable reason, not the node
                raise PipelineError(
                    f"series {plan.series_instance_uid}: inference of task {task.name} on stack {index + 1} "
                    f"failed: {type(exc).__name__}: {exc}; retry the job (segnode jobs retry) once the cause "
                    "is fixed",
                    reason="inference_failed",
                ) from exc
            labels = np.ascontiguousarray(result.labels)
            if labels.shape != volume.shape:
                raise PipelineError(
                    f"job {plan.job_id}: label map shape {labels.shape} != stack shape {volume.shape}",
                    reason="label_map_shape",
                )
            name = f"labels_{index + 1}_{_safe_name(task.name)}{'_fast' if task.fast else ''}.npy"
            write_npy(labels, folder / name)
            records.append(
                LabelMapRecord(
                    file=name,
                    stack_index=index,
                    stack_label=volume.stack_label,
                    task=str(result.task),
                    mode=str(result.mode),
                    fast=task.fast,
                    roi_subset=list(result.roi_subset) if result.roi_subset else None,
                    class_map={str(k): str(v) for k, v in sorted(result.class_map.items())},
                    models=[dict(vars(m)) for m in result.models],
                    device=str(result.device),
                    timings={k: round(float(v), 4) for k, v in result.timings.items()},
                )
            )
            ctx.metrics.inference_finished(
                records[-1].task, records[-1].device, result.timings.get("total", 0.0)
            )
            for event in result.events:
                ctx.audit.event(
                    "inference_event",
                    "info",
                    event[:255],
                    job_id=plan.job_id,
                    study=plan.study_instance_uid,
                    series=plan.series_instance_uid,
                )
    ctx.jobs.set_output(plan.job_id, "label_maps", [r.to_json() for r in records])
    return records


def load_label_map(ctx: PipelineContext, job_id: int, record: LabelMapRecord) -> npt.NDArray[np.uint8]:
    path = ctx.work_dir(job_id) / record.file
    try:
        data: npt.NDArray[np.uint8] = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise PipelineError(
            f"job {job_id}: its label map {record.file} is no longer in the work folder (removed outside "
            "SegNode): send the series again to segment it anew",
            reason="label_map_missing",
        ) from exc
    return data
