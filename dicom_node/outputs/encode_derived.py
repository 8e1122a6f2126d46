"""The objects a route asks for beside the SEG (volumetry SR, overlay series, RTSTRUCT): encoded from the
stack's volume and label map in the encoding stage, written atomically to the job's outbox (the overlay's
images each as it is drawn; a series that cannot be written to its end leaves none of its files), validated,
and listed in ``Job.outputs['derived']`` (one :class:`~dicom_node.jobs.records.DerivedOutput` per stack and
kind; the deliveries are opened per destination and kind by ``dicom_node.outputs.outbox``).

Every object's UIDs derive from the identity of the stack's SEG (:class:`DerivedContext`), so encoding the
stack again writes the same files under the same names and a resend replaces the objects in the PACS.
The SR references the segments of the SEG it measures; a route with ``sr`` always has a SEG (the
configuration refuses ``sr`` without one). Where the destinations want SEGs of both Segmentation Types,
the SR references the first encoded (BINARY before LABELMAP).

Validation (dciodvfy, per ``seg.validate_with_dciodvfy``): the SR and the RTSTRUCT as written; of the
overlay series the first, middle and last image (the images differ only in their pixels, Instance Number,
SOP Instance UID and source reference, all made by the same code). A kind that cannot be made
(``output_encoding_failed``, ``output_invalid``) is recorded with its reason instead of files: its
deliveries fail with that reason while the other kinds are sent, and ``segnode jobs retry`` encodes the
job again (same UIDs; what was delivered is not sent again).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from conversion.volume import Volume
from dicom_node.durable import write_dicom
from dicom_node.jobs.context import PipelineContext, PipelineError
from dicom_node.jobs.records import DerivedOutput, LabelMapRecord
from dicom_node.outputs.derived import DerivedContext, DerivedEncodingError, OutputKind
from dicom_node.outputs.label_layout import LabelLayout
from dicom_node.outputs.seg import EncodedSeg
from dicom_node.outputs.seg_options import SegOptions
from dicom_node.outputs.seg_segments import AlgorithmInfo, SegmentSpec
from dicom_node.outputs.volumetry import Volumetry
from dicom_node.uids import path_safe_uid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackResult:
    """What the derived objects of one stack are made from."""

    volume: Volume
    labels: npt.NDArray[Any]
    record: LabelMapRecord
    segments: Mapping[int, SegmentSpec]
    algorithm: AlgorithmInfo
    measured: Volumetry
    #: The SEG the SR references (None: the route asks for no SEG).
    seg: EncodedSeg | None
    #: The settings of that SEG (or of the SEG the route would have), the identity of the derived objects.
    options: SegOptions
    #: The label map in slice order with its labels' counts and boxes, made once for the overlay and the
    #: RTSTRUCT (and the volumetry) where the route asks for either; None: each makes what it needs.
    layout: LabelLayout | None = None


def _datasets(
    kind: OutputKind, context: DerivedContext, stack: StackResult
) -> tuple[Iterable[Dataset], Callable[[Dataset, IO[bytes]], None] | None, str]:
    """The objects of one kind, how to write them (None: ``save_as``) and their Series Instance UID. The
    overlay's images are drawn as they are taken, each valid until the next: written one by one, the
    series holds the pixels of one image at a time."""
    from dicom_node.outputs.overlay import encode_overlay
    from dicom_node.outputs.rtstruct import encode_rtstruct
    from dicom_node.outputs.sr import encode_volumetry_sr

    if kind is OutputKind.SR:
        if stack.seg is None:
            raise PipelineError(
                f"{context.where}: the volumetry SR references a SEG, and none was encoded",
                reason="output_encoding_failed",
            )
        report = encode_volumetry_sr(context, stack.measured, stack.seg, stack.segments).dataset
        return (report,), None, str(report.SeriesInstanceUID)
    if kind is OutputKind.OVERLAY:
        # the labels present were counted for the volumetry: the encoders need not read the map for them
        overlay = encode_overlay(context, stack.labels, stack.segments, stack.measured.labels, stack.layout)
        return overlay.images(), overlay.writer.write, overlay.series_instance_uid
    rtstruct = encode_rtstruct(context, stack.labels, stack.segments, stack.measured.labels, stack.layout)
    return (rtstruct.dataset,), None, str(rtstruct.dataset.SeriesInstanceUID)


def validate_derived(ctx: PipelineContext, kind: OutputKind, paths: Sequence[Path], where: str) -> int:
    """dciodvfy on the written files (a sample of the overlay series); returns the number of warnings."""
    from dicom_node.outputs.validation import SegValidationError, validate_with_dciodvfy

    seg = ctx.config.seg
    mode = seg.validate_with_dciodvfy
    if mode == "never" or (mode == "auto" and shutil.which("dciodvfy") is None):
        return 0
    checked = list(dict.fromkeys([paths[0], paths[len(paths) // 2], paths[-1]])) if paths else []
    warnings = 0
    for path in checked:
        try:
            warnings += len(validate_with_dciodvfy(path, timeout_s=seg.validation_timeout_s).warnings)
        except SegValidationError as exc:
            raise PipelineError(
                f"{where}: the {kind} object is not valid: dciodvfy reported {len(exc.errors)} error(s): "
                f"{exc.errors[0] if exc.errors else exc}",
                reason="output_invalid",
            ) from exc
    return warnings


def encode_derived(
    ctx: PipelineContext,
    job_id: int,
    stack: StackResult,
    targets: Mapping[OutputKind, Sequence[str]],
) -> list[DerivedOutput]:
    """Encode, write and validate the kinds of ``targets`` (kind -> the destinations that get it) of one
    stack; nothing for an empty
    label map (there is no structure to report, outline or contour). A kind that cannot be made (its
    encoder refuses the input, dciodvfy finds it invalid) is recorded with its reason and no files, and
    an ``output_failed`` audit event; the other kinds go on. Errors of the node itself (disk full, no
    validator) end the stage."""
    if not targets or not np.any(stack.labels):
        return []
    context = DerivedContext(stack.volume, stack.algorithm, stack.options)
    outputs = []
    for kind, destinations in targets.items():
        common: dict[str, Any] = {
            "kind": str(kind),
            "destinations": list(destinations),
            "task": stack.record.task,
            "stack_index": stack.record.stack_index,
            "label_map": stack.record.file,
            "seg_sop_instance_uid": context.identity,
        }
        try:
            outputs.append(_encode_kind(ctx, job_id, kind, context, stack, common))
        except (DerivedEncodingError, PipelineError) as exc:
            logger.warning("job %d: %s of %s not made: [%s] %s", job_id, kind, context.where, exc.reason, exc)
            ctx.audit.event(
                "output_failed", "failure", exc.reason, job_id=job_id, detail=f"{kind}: {exc.message}"[:4000]
            )
            outputs.append(
                DerivedOutput(
                    files=[], series_instance_uid="", reason=exc.reason, error=exc.message, **common
                )
            )
    return outputs


def _encode_kind(
    ctx: PipelineContext,
    job_id: int,
    kind: OutputKind,
    context: DerivedContext,
    stack: StackResult,
    common: Mapping[str, Any],
) -> DerivedOutput:
    started = time.perf_counter()
    if ctx.failpoints.fails_output(str(kind)):
        raise DerivedEncodingError(f"{context.where}: the {kind} encoder failed (injected by the test plan)")
    datasets, writer, series_uid = _datasets(kind, context, stack)
    folder = ctx.outbox_dir(job_id)
    paths: list[Path] = []
    try:
        for ds in datasets:  # each written before the next is made
            name = path_safe_uid(str(ds.SOPInstanceUID), f"{kind} SOP Instance UID")
            paths.append(write_dicom(ds, folder / f"{name}.dcm", writer))
        encoded_s = time.perf_counter() - started
        warnings = validate_derived(ctx, kind, paths, context.where)
    except BaseException:
        for path in paths:  # never sent (a series made in part, an invalid object): not left in the outbox
            path.unlink(missing_ok=True)
        raise
    logger.info(
        "job %d: %s of %s: %d object(s) in %.2f s", job_id, kind, context.where, len(paths), encoded_s
    )
    return DerivedOutput(
        files=[p.name for p in paths],
        series_instance_uid=series_uid,
        validation_warnings=warnings,
        encode_s=round(encoded_s, 4),
        validation_s=round(time.perf_counter() - started - encoded_s, 4),
        **common,
    )
