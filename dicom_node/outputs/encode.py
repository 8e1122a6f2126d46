"""The encoding stage: one DICOM-SEG per saved label map and Segmentation Type the destinations want,
written atomically to ``<outbox_dir>/<job id>/``, validated, and listed in ``Job.outputs['seg']``; the SR,
overlay and RTSTRUCT the route asks for beside it (``dicom_node.outputs.encode_derived``,
``Job.outputs['derived']``); the deliveries are opened per destination and kind by
``dicom_node.outputs.outbox``. The volume of every structure of every label map goes to
``Job.outputs['volumetry']`` (the rows of ``segnode results``)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy.typing as npt
from sqlalchemy import select

from config.routing import SegConfig
from conversion.volume import Volume
from dicom_node.audit.tables import Event
from dicom_node.durable import write_dicom
from dicom_node.jobs.context import PipelineContext, PipelineError, check_free_space
from dicom_node.jobs.records import Converted, DerivedOutput, JobPlan, LabelMapRecord, SegOutput, label_maps
from dicom_node.jobs.routing import derived_targets, plan_outputs
from dicom_node.jobs.segment import load_label_map
from dicom_node.outputs import volumetry
from dicom_node.outputs.attribute_values import Correction
from dicom_node.outputs.derived import OutputKind
from dicom_node.outputs.derived_attributes import correct_derived
from dicom_node.outputs.encode_derived import StackResult, encode_derived
from dicom_node.outputs.label_layout import label_layout
from dicom_node.outputs.seg import (
    AlgorithmInfo,
    EmptySegmentationError,
    EncodedSeg,
    SegmentationType,
    SegOptions,
    encode_seg,
    seg_options,
    segments_from_catalog,
)
from dicom_node.outputs.seg_sources import SEG_COPIED, SEG_ROOT_COPIES
from dicom_node.uids import path_safe_uid
from inference.results import SegmentationResult

logger = logging.getLogger(__name__)

#: Algorithm name written in the SEG's Algorithm Identification.
ALGORITHM_NAME = "TotalSegmentator"


def algorithm_info(
    task: str, mode: str, models: Sequence[Mapping[str, Any]], roi_subset: Sequence[str] | None
) -> AlgorithmInfo:
    """Algorithm Identification of a label map: task, reference version, models and their checkpoints."""
    from inference.registry import TOTALSEGMENTATOR_REFERENCE_VERSION

    parameters = {
        "mode": mode,
        "models": ",".join(str(m["dataset_id"]) for m in models),
        "checkpoints": ",".join(str(m["checkpoint_sha256"])[:12] for m in models),
    }
    if roi_subset:
        parameters["roi_subset"] = ",".join(roi_subset)
    return AlgorithmInfo(
        name=ALGORITHM_NAME,
        task=task,
        version=TOTALSEGMENTATOR_REFERENCE_VERSION,
        parameters=parameters,
    )


def encode_result_seg(
    volume: Volume,
    labels: npt.NDArray[Any],
    result: SegmentationResult,
    seg: SegConfig,
    segmentation_type: str,
) -> EncodedSeg:
    """Encode the labels of an engine result on ``volume`` as a SEG (``segnode segment --seg``).

    Parameters
    ----------
    volume: conversion.volume.Volume
        The stack the engine segmented.
    labels: numpy.ndarray
        Its label map (``result.labels``, or a label map derived from it) on the volume's grid.
    result: inference.results.SegmentationResult
        What the engine returned: task, mode, models and ROI subset become the Algorithm Identification and
        the UIDs; the task's catalog describes the segments.
    seg: config.routing.SegConfig
        The ``seg`` section of the configuration (series attributes, compression, UID root).
    segmentation_type: str
        ``BINARY`` or ``LABELMAP``.

    Returns
    -------
    EncodedSeg
        As :func:`dicom_node.outputs.seg.encode_seg` returns it.

    Raises
    ------
    ValueError
        ``segmentation_type`` is not a Segmentation Type.
    EmptySegmentationError, SegEncodingError, SourceAttributeError
        As :func:`dicom_node.outputs.seg.encode_seg` raises them.
    """
    algorithm = algorithm_info(
        str(result.task),
        str(result.mode),
        [dict(vars(m)) for m in result.models],
        list(result.roi_subset) if result.roi_subset else None,
    )
    options = seg_options(seg, SegmentationType(segmentation_type))
    return encode_seg(volume, labels, segments_from_catalog(str(result.task)), algorithm, options)


def validate_seg(
    encoded: EncodedSeg, path: Path, where: str, validate: Callable[[Path], int]
) -> tuple[int, tuple[Correction, ...]]:
    """Validate a written SEG with ``validate`` (returns the number of warnings, raises
    :class:`~dicom_node.outputs.validation.SegValidationError`); returns the warnings and the corrections
    that validation led to.

    Like is compared with like: each error dciodvfy reports is attributed to the attribute it names. Errors
    of attributes the SEG copied from its source are the source's (a fault the sanitiser did not know):
    they get the sanitiser's Type rules in the SEG, which is written and validated again. An error of what
    SegNode wrote itself, or one that names no attribute, fails the job (``seg_invalid``).
    """
    from dicom_node.outputs.validation import SegValidationError, reported_attributes

    try:
        return validate(path), ()
    except SegValidationError as exc:
        reported, unnamed = reported_attributes(exc.errors)
        own = [k for k in reported if k not in SEG_ROOT_COPIES]
        if unnamed or own:
            first = (unnamed or [line for line in exc.errors if any(k in line for k in own)] or exc.errors)[0]
            raise SegValidationError(
                f"{where}: dciodvfy reported {len(exc.errors)} error(s) in the SEG, of what SegNode wrote "
                f"itself: {first}",
                exc.errors,
            ) from exc
        corrections, _ = correct_derived(encoded.dataset, reported, SEG_COPIED, where)
    write_dicom(encoded.dataset, path)
    return validate(path), corrections


def _validate(ctx: PipelineContext, path: Path) -> int:
    """dciodvfy per ``seg.validate_with_dciodvfy``; returns the number of warnings."""
    from dicom_node.outputs.validation import validate_with_dciodvfy

    mode = ctx.config.seg.validate_with_dciodvfy
    if mode == "never" or (mode == "auto" and shutil.which("dciodvfy") is None):
        return 0
    seg = ctx.config.seg
    report = validate_with_dciodvfy(
        path, max_frames=seg.validation_max_frames, timeout_s=seg.validation_timeout_s
    )
    return len(report.warnings)


def _encode_segs(
    ctx: PipelineContext,
    plan: JobPlan,
    volume: Volume,
    labels: npt.NDArray[Any],
    record: LabelMapRecord,
    corrections: dict[str, Correction],
) -> tuple[list[SegOutput], EncodedSeg | None, SegOptions] | None:
    """The SEGs of one stack (one per Segmentation Type the destinations want), written and validated;
    with the first SEG and its settings (the identity of the objects derived beside it). None: the label
    map is empty (``seg_skipped``), nothing to send."""
    segments = segments_from_catalog(record.task)
    algorithm = algorithm_info(record.task, record.mode, record.models, record.roi_subset)
    outputs: list[SegOutput] = []
    first: tuple[EncodedSeg, SegOptions] | None = None
    folder = ctx.outbox_dir(plan.job_id)
    for target in plan_outputs(plan.action, ctx.config.destinations):
        options = seg_options(ctx.config.seg, SegmentationType(str(target.segmentation_type)))
        started = time.perf_counter()
        try:
            encoded = encode_seg(volume, labels, segments, algorithm, options)
        except EmptySegmentationError as exc:
            ctx.audit.event(
                "seg_skipped",
                "info",
                exc.reason,
                job_id=plan.job_id,
                study=plan.study_instance_uid,
                series=plan.series_instance_uid,
                detail=exc.message,
            )
            return None
        first = first or (encoded, options)
        name = f"{path_safe_uid(encoded.sop_instance_uid, 'SEG SOP Instance UID')}.dcm"
        path = write_dicom(encoded.dataset, folder / name)
        encoded_s = time.perf_counter() - started
        warnings, reported = validate_seg(encoded, path, _where(volume), partial(_validate, ctx))
        for correction in (*encoded.corrections, *reported):
            corrections.setdefault(str(correction), correction)
        validation_s = time.perf_counter() - started - encoded_s
        outputs.append(
            SegOutput(
                file=name,
                sop_instance_uid=encoded.sop_instance_uid,
                series_instance_uid=encoded.series_instance_uid,
                segmentation_type=str(target.segmentation_type),
                destinations=list(target.destinations),
                task=record.task,
                stack_index=record.stack_index,
                label_map=record.file,
                number_of_frames=encoded.number_of_frames,
                segments=len(encoded.segment_labels),
                validation_warnings=warnings,
                encode_s=round(encoded_s, 4),
                validation_s=round(validation_s, 4),
            )
        )
    if first is None:
        return outputs, None, seg_options(ctx.config.seg, SegmentationType.BINARY)
    return outputs, first[0], first[1]


#: The kinds that read the label map in slice order (see :mod:`dicom_node.outputs.label_layout`).
_SLICE_ORDERED_KINDS = frozenset((OutputKind.OVERLAY, OutputKind.RTSTRUCT))


def encode_stage(ctx: PipelineContext, converted: Converted) -> list[SegOutput]:
    """Encode every saved label map as the route's outputs: DICOM-SEG (one per Segmentation Type the
    destinations want, in ``Job.outputs['seg']``, returned) and the SR, overlay and RTSTRUCT it asks for
    (``Job.outputs['derived']``), written atomically to the job's outbox and validated."""
    plan = converted.plan
    ctx.failpoints.pause("encoding", plan.job_id)
    check_free_space(ctx, ctx.outbox_root, f"job {plan.job_id}: SEG objects not written")
    records = label_maps(ctx.jobs, plan.job_id)
    if not records:
        raise PipelineError(f"job {plan.job_id}: no label maps recorded", reason="label_map_missing")
    outputs: list[SegOutput] = []
    derived: list[DerivedOutput] = []
    corrections: dict[str, Correction] = {}
    measured: list[volumetry.Volumetry] = []
    targets = derived_targets(plan.action, ctx.config.destinations)
    for record in records:
        if record.stack_index >= len(converted.volumes):
            raise PipelineError(
                f"job {plan.job_id}: label map {record.file} is for stack {record.stack_index + 1}, "
                f"the series now has {len(converted.volumes)} selected stack(s)",
                reason="stack_mismatch",
            )
        volume = converted.volumes[record.stack_index]
        labels = load_label_map(ctx, plan.job_id, record)
        # the overlay and the RTSTRUCT read the map in slice order with its labels' boxes: made once, and
        # the volumetry takes its counts from it
        layout = label_layout(labels) if _SLICE_ORDERED_KINDS & set(targets) else None
        names = volumetry.catalog_names(record.task)
        measured.append(volumetry.measure(volume, labels, record.task, names, layout))
        encoded = _encode_segs(ctx, plan, volume, labels, record, corrections)
        if encoded is None:
            continue
        segs, seg, options = encoded
        outputs += segs
        stack = StackResult(
            volume,
            labels,
            record,
            segments_from_catalog(record.task),
            algorithm_info(record.task, record.mode, record.models, record.roi_subset),
            measured[-1],
            seg,
            options,
            layout,
        )
        derived += encode_derived(ctx, plan.job_id, stack, targets)
    ctx.jobs.set_output(plan.job_id, "volumetry", volumetry.result_rows(measured))
    ctx.jobs.set_output(plan.job_id, "seg", [o.to_json() for o in outputs])
    ctx.jobs.set_output(plan.job_id, "derived", [o.to_json() for o in derived])
    _record_corrections(ctx, plan, list(corrections))
    return outputs


def _where(volume: Volume) -> str:
    return f"series {volume.series_instance_uid}" + (
        f" stack {volume.stack_label}" if volume.stack_label else ""
    )


def _record_corrections(ctx: PipelineContext, plan: JobPlan, corrections: list[str]) -> None:
    """One ``source_attributes_corrected`` event per job: every correction of the source attributes its SEG
    objects copy (``keyword: problem -> rule``, never the value, separated by ``; ``); not repeated when the
    stage runs again with the same corrections."""
    if not corrections:
        return
    detail = "; ".join(corrections)
    with ctx.db.read() as session:
        earlier = session.scalars(
            select(Event.detail).where(
                Event.job_id == plan.job_id, Event.what == "source_attributes_corrected"
            )
        ).all()
    if detail in earlier:
        return
    logger.info(
        "job %d: %d attribute(s) of series %s corrected for the SEG: %s",
        plan.job_id,
        len(corrections),
        plan.series_instance_uid,
        detail,
    )
    ctx.audit.event(
        "source_attributes_corrected",
        "info",
        f"{len(corrections)} attribute(s)",
        job_id=plan.job_id,
        study=plan.study_instance_uid,
        series=plan.series_instance_uid,
        detail=detail,
    )
