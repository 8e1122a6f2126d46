"""The job pipeline's stages: routing and conversion, segmentation, encoding (sending:
``dicom_node.outputs.outbox``).

A job (one per completed series and matched route) moves through ``queued -> converting -> segmenting ->
encoding -> sending -> done`` or ends ``failed`` with the stage and a stable reason code
(``dicom_node.jobs.store.TRANSITIONS``). A job's state is the stage whose result is still missing: a job in
``segmenting`` has been routed and converted and waits for (or is in) inference. Each stage is a plain
function that reads what it needs by job id from the database and the spool and records its result:

* **converting** (:func:`convert_stage`): routes the series on its first run (the rule name is stored on
  the job; further matching rules of a fan-out get their own job, an ``ignore`` ends the job as cancelled
  with reason ``route_ignore``), reads the instances from the spool and builds the stacks the route selects.
  Volumes stay in memory; after a restart they are built again from the spool (:func:`reload_volumes`).
* **segmenting** (:func:`segment_stage`): each selected stack x task through the warm engine; label maps are
  saved as ``.npy`` in the job's work folder (``<work_dir>/<job id>/``) and listed in ``Job.outputs``.
* **encoding** (:func:`encode_stage`): one DICOM-SEG per label map and Segmentation Type, written atomically
  to ``<outbox_dir>/<job id>/``, validated, and one delivery per destination (``dicom_node.outputs.outbox``).

Each stage's start, end and duration are kept in ``Job.stage_timings`` (JSON) for ``segnode jobs show`` and
the end-to-end benchmark. The worker threads that run the stages are in ``dicom_node.jobs.workers``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from sqlalchemy import select

from config.errors import SegNodeError
from config.model import SegNodeConfig
from config.routing import RouteAction, SegConfig
from conversion.headers import SourceImage
from conversion.volume import Volume
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.audit.tables import Association, Event, Instance, Job
from dicom_node.failpoints import FaultPlan
from dicom_node.http.metrics import NodeMetrics
from dicom_node.jobs.routing import DEFAULT_ROUTE_NAME, SeriesFacts, plan_outputs, route_series, select_stacks
from dicom_node.jobs.store import JobState, JobStore
from dicom_node.receiving.spool import FreeSpaceProbe, disk_free_bytes
from dicom_node.uids import path_safe_uid

logger = logging.getLogger(__name__)

#: Algorithm name written in the SEG's Algorithm Identification.
ALGORITHM_NAME = "TotalSegmentator"
#: Failure reason of a stage that found no room on disk; the node retries such jobs when space returns
#: (``dicom_node.jobs.retention.resume_after_space_freed``).
OUT_OF_RESOURCES = "out_of_resources"


class PipelineError(SegNodeError):
    """A job cannot go on; ``reason`` is the stable code recorded as the job's failure reason."""

    reason = "pipeline_error"


class EngineLike(Protocol):
    """What the segmentation stage needs of ``inference.engine.Engine``."""

    def segment(
        self,
        voxels: np.ndarray,
        affine_lps: npt.NDArray[np.float64],
        task: str = ...,
        fast: bool = ...,
        fastest: bool = ...,
        roi_subset: Sequence[str] | None = ...,
    ) -> Any: ...


@dataclass
class PipelineContext:
    """Everything the stages need: configuration, audit log, job store and the folders."""

    config: SegNodeConfig
    audit: AuditLog
    jobs: JobStore
    spool_root: Path
    work_root: Path
    outbox_root: Path
    #: Free bytes of the file system of a folder (the outbox's is checked before a SEG is written).
    free_space_probe: FreeSpaceProbe = disk_free_bytes
    #: Test-only fault injection (``dicom_node.failpoints``); inert by default.
    faults: FaultPlan = field(default_factory=FaultPlan)
    #: Stage latencies, inference times and send attempts for ``/metrics``.
    metrics: NodeMetrics = field(default_factory=NodeMetrics)

    @classmethod
    def create(
        cls,
        config: SegNodeConfig,
        audit: AuditLog,
        jobs: JobStore,
        free_space_probe: FreeSpaceProbe = disk_free_bytes,
        faults: FaultPlan | None = None,
        metrics: NodeMetrics | None = None,
    ) -> PipelineContext:
        return cls(
            config=config,
            audit=audit,
            jobs=jobs,
            spool_root=Path(config.storage.spool_dir),
            work_root=Path(config.pipeline.work_dir),
            outbox_root=Path(config.pipeline.outbox_dir),
            free_space_probe=free_space_probe,
            faults=faults or FaultPlan(),
            metrics=metrics or jobs.metrics,
        )

    @property
    def db(self) -> Database:
        return self.audit.db

    def now(self) -> datetime:
        return self.audit.clock()

    def work_dir(self, job_id: int) -> Path:
        return self.work_root / str(int(job_id))

    def outbox_dir(self, job_id: int) -> Path:
        return self.outbox_root / str(int(job_id))


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


@dataclass(frozen=True)
class LabelMapRecord:
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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> LabelMapRecord:
        return cls(**dict(data))


@dataclass(frozen=True)
class SegOutput:
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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> SegOutput:
        return cls(**dict(data))


@dataclass
class StageTimer:
    """Measures one run of a stage; :func:`record_stage_timing` stores it."""

    stage: str
    started_at: datetime
    start: float
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- job rows


def _job_row(ctx: PipelineContext, job_id: int) -> Job:
    with ctx.db.read() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PipelineError(f"job {job_id} does not exist", reason="job_not_found")
        session.expunge(job)
        return job


def job_outputs(ctx: PipelineContext, job_id: int) -> dict[str, Any]:
    raw = _job_row(ctx, job_id).outputs
    data: dict[str, Any] = json.loads(raw) if raw else {}
    return data


def update_outputs(ctx: PipelineContext, job_id: int, key: str, value: Any) -> None:
    """Set ``Job.outputs[key]`` (one transaction)."""
    with ctx.db.write() as session:
        job = session.get_one(Job, job_id)
        data = json.loads(job.outputs) if job.outputs else {}
        data[key] = value
        job.outputs = json.dumps(data, sort_keys=True)


@contextmanager
def timed_stage(ctx: PipelineContext, job_id: int, stage: str) -> Iterator[StageTimer]:
    """Time the body and store the stage's start, end and duration on the job (also when it fails)."""
    timer = StageTimer(stage, ctx.now(), time.perf_counter())
    ok = False
    try:
        yield timer
        ok = True
    finally:
        seconds = time.perf_counter() - timer.start
        record_stage_timing(ctx, job_id, timer, seconds, ok)


def record_stage_timing(
    ctx: PipelineContext,
    job_id: int,
    timer: StageTimer,
    seconds: float,
    ok: bool,
    ended_at: datetime | None = None,
) -> None:
    """Store one run of a stage in ``Job.stage_timings`` (the latest run per stage, and every run)."""
    entry: dict[str, Any] = {
        "started_at": timer.started_at.isoformat(),
        "ended_at": (ended_at or ctx.now()).isoformat(),
        "seconds": round(seconds, 4),
        "ok": ok,
    }
    entry.update(timer.extra)
    with ctx.db.write() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        timings = json.loads(job.stage_timings) if job.stage_timings else {}
        runs = timings.setdefault("runs", [])
        runs.append({"stage": timer.stage, **entry})
        timings[timer.stage] = entry
        job.stage_timings = json.dumps(timings, sort_keys=True)
    ctx.metrics.stage_finished(timer.stage, seconds)


def fail_job(ctx: PipelineContext, job_id: int, exc: BaseException) -> None:
    """Move a job to ``failed`` with the error's reason code and message."""
    reason = exc.reason if isinstance(exc, SegNodeError) else "internal_error"
    message = exc.message if isinstance(exc, SegNodeError) else f"{type(exc).__name__}: {exc}"
    logger.warning("job %d failed: [%s] %s", job_id, reason, message)
    ctx.jobs.transition(job_id, JobState.failed, reason=reason, detail=message[:2000])


# ---------------------------------------------------------------------------------------- converting


@dataclass
class SeriesInput:
    """The stored instances of a job's series (spool files), and the AE titles they arrived with."""

    paths: list[Path]
    called_ae_title: str
    calling_ae_title: str
    _sources: list[SourceImage] | None = field(default=None, init=False, repr=False)

    def sources(self) -> list[SourceImage]:
        """The files' headers, each read once for routing and conversion (``NotSegmentableError``
        ``unreadable`` for a file that is not DICOM)."""
        from conversion.headers import read_sources

        if self._sources is None:
            self._sources = read_sources(list(self.paths))
        return self._sources

    def headers(self) -> list[Dataset]:
        """The instances' complete headers without pixel data (what routing looks at)."""
        from conversion.errors import NotSegmentableError

        try:
            return [source.header for source in self.sources()]
        except NotSegmentableError as exc:
            raise PipelineError(exc.message, reason="spool_file_unreadable") from exc


def read_series(ctx: PipelineContext, job: Job) -> SeriesInput:
    """The spool files of the job's series (checked to exist; they are read by the conversion, which reads
    each header once and decodes the pixels straight into the volumes)."""
    with ctx.db.read() as session:
        rows = list(
            session.execute(
                select(Instance.spool_path, Instance.received_at, Instance.association_id)
                .where(Instance.series_instance_uid == job.series_instance_uid)
                .order_by(Instance.received_at, Instance.sop_instance_uid)
            )
        )
        last_association = next((r.association_id for r in reversed(rows) if r.association_id), None)
        called = calling = ""
        if last_association is not None:
            assoc = session.get(Association, last_association)
            if assoc is not None:
                called, calling = assoc.called_ae_title, assoc.calling_ae_title
    if not rows:
        raise PipelineError(
            f"series {job.series_instance_uid}: no stored instances in the audit database",
            reason="no_instances",
        )
    paths = [ctx.spool_root / row.spool_path for row in rows]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        _raise_missing(ctx, job, missing, len(paths))
    return SeriesInput(paths, called, calling)


def _raise_missing(ctx: PipelineContext, job: Job, missing: list[Path], total: int) -> None:
    """Why the job cannot read its series: retention deleted the earlier instances (a late instance re-opened
    a series already delivered or given up), or files vanished from the spool."""
    with ctx.db.read() as session:
        purge = session.scalars(
            select(Event)
            .where(Event.what == "retention_purged", Event.series_instance_uid == job.series_instance_uid)
            .order_by(Event.id.desc())
        ).first()
    if purge is not None:
        raise PipelineError(
            f"series {job.series_instance_uid}: {len(missing)} of its {total} instance(s) were deleted by "
            f"retention on {purge.at:%Y-%m-%d %H:%M} UTC ({purge.reason}); the instance(s) received since "
            "cannot be segmented without them: send the complete series again",
            reason="spool_purged",
        )
    raise PipelineError(
        f"series {job.series_instance_uid}: spool file {missing[0]} is missing"
        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
        reason="spool_file_missing",
    )


def action_of(ctx: PipelineContext, route: str) -> RouteAction:
    """The action of a route by name (the configuration may have changed since the job was routed)."""
    if route == DEFAULT_ROUTE_NAME:
        return ctx.config.default_route
    for rule in ctx.config.routes:
        if rule.name == route:
            return rule.action
    raise PipelineError(
        f"route {route!r} of the job is no longer in the configuration (routes: "
        f"{', '.join(r.name for r in ctx.config.routes) or 'none'})",
        reason="route_missing",
    )


def route_job(ctx: PipelineContext, job: Job, series: SeriesInput) -> JobPlan | None:
    """Route a job's series: the job takes the first matching action; each further action of a fan-out
    becomes a new ``queued`` job of the same series; an ``ignore`` cancels the job (reason ``route_ignore``).
    """
    facts = SeriesFacts.from_headers(series.headers(), series.called_ae_title, series.calling_ae_title)
    decision = route_series(facts, ctx.config.routes, ctx.config.default_route)
    explanation = "; ".join(
        f"{ev.name}: {'matched' if ev.matched else 'no match'} ({ev.explain()})"
        for ev in decision.evaluations
        if ev.reached
    )
    if decision.ignored:
        with ctx.db.write() as session:
            ctx.audit.add_event(
                session,
                "series_ignored",
                "info",
                "route_ignore",
                job_id=job.id,
                study=job.study_instance_uid,
                series=job.series_instance_uid,
                detail=f"{decision.summary()}; {explanation}"[:4000],
            )
        ctx.jobs.transition(job.id, JobState.cancelled, reason="route_ignore", detail=decision.summary())
        return None
    first, *others = decision.actions
    with ctx.db.write() as session:
        row = session.get_one(Job, job.id)
        row.route = first.rule
        ctx.audit.add_event(
            session,
            "job_routed",
            "success",
            first.rule,
            job_id=job.id,
            study=job.study_instance_uid,
            series=job.series_instance_uid,
            detail=f"{decision.summary()}; {explanation}"[:4000],
        )
        for extra in others:
            now = ctx.now()
            sibling = Job(
                series_instance_uid=job.series_instance_uid,
                study_instance_uid=job.study_instance_uid,
                state=JobState.queued.value,
                route=extra.rule,
                created_at=now,
                updated_at=now,
            )
            session.add(sibling)
            session.flush()
            ctx.audit.add_event(
                session,
                "job_created",
                "success",
                f"fan-out of job {job.id} to route {extra.rule}",
                job_id=sibling.id,
                study=job.study_instance_uid,
                series=job.series_instance_uid,
                detail="state queued",
            )
    return JobPlan(job.id, job.series_instance_uid, job.study_instance_uid, first.rule, first.action)


def _volumes(ctx: PipelineContext, plan: JobPlan, series: SeriesInput) -> list[Volume]:
    from conversion import load_series

    volumes = load_series(series.sources())
    selected = select_stacks(volumes, plan.action)
    if not selected:
        labels = ", ".join(v.stack_label or f"stack {n + 1}" for n, v in enumerate(volumes))
        raise PipelineError(
            f"series {plan.series_instance_uid}: route {plan.route!r} selects none of its stacks ({labels})",
            reason="no_stack_selected",
        )
    return selected


def convert_stage(ctx: PipelineContext, job_id: int) -> Converted | None:
    """Route (first run only) and convert a job in ``converting``; ``None`` when the route ignores it."""
    ctx.faults.pause("converting", job_id)
    job = _job_row(ctx, job_id)
    series = read_series(ctx, job)
    if job.route is None:
        plan = route_job(ctx, job, series)
        if plan is None:
            return None
    else:
        plan = JobPlan(
            job.id, job.series_instance_uid, job.study_instance_uid, job.route, action_of(ctx, job.route)
        )
    volumes = _volumes(ctx, plan, series)
    logger.info(
        "job %d: %d stack(s) of series %s to segment (route %s)",
        job_id,
        len(volumes),
        plan.series_instance_uid,
        plan.route,
    )
    return Converted(plan, volumes)


def reload_volumes(ctx: PipelineContext, job_id: int) -> Converted:
    """Rebuild the volumes of a routed job from the spool (a job resumed after a restart)."""
    job = _job_row(ctx, job_id)
    if job.route is None:
        raise PipelineError(f"job {job_id} has not been routed", reason="not_routed")
    plan = JobPlan(
        job.id, job.series_instance_uid, job.study_instance_uid, job.route, action_of(ctx, job.route)
    )
    return Converted(plan, _volumes(ctx, plan, read_series(ctx, job)))


# ---------------------------------------------------------------------------------------- segmenting


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[Any], None]) -> Path:
    """Write a file through ``write(file object)`` to a temporary name, fsync, then rename into place.

    A full disk (ENOSPC, EDQUOT) raises :class:`PipelineError` with reason ``out_of_resources``; nothing
    partial is left."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PipelineError(f"disk full while writing {target}", reason=OUT_OF_RESOURCES) from exc
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _save_npy(array: npt.NDArray[Any], fh: Any) -> None:
    np.save(fh, array, allow_pickle=False)


def _save_dicom(dataset: Dataset, fh: Any) -> None:
    dataset.save_as(fh, enforce_file_format=True)


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:40] or "task"


def segment_stage(ctx: PipelineContext, converted: Converted, engine: EngineLike) -> list[LabelMapRecord]:
    """Segment each selected stack with each task of the route; save the label maps and list them."""
    plan = converted.plan
    ctx.faults.pause("segmenting", plan.job_id)
    folder = ctx.work_dir(plan.job_id)
    records: list[LabelMapRecord] = []
    for index, volume in enumerate(converted.volumes):
        for task in plan.action.tasks:
            try:
                ctx.faults.before_prediction(plan.series_instance_uid)
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
                    f"failed: {type(exc).__name__}: {exc}",
                    reason="inference_failed",
                ) from exc
            labels = np.ascontiguousarray(result.labels)
            if labels.shape != volume.shape:
                raise PipelineError(
                    f"job {plan.job_id}: label map shape {labels.shape} != stack shape {volume.shape}",
                    reason="label_map_shape",
                )
            name = f"labels_{index + 1}_{_safe_name(task.name)}{'_fast' if task.fast else ''}.npy"
            atomic_write(folder / name, partial(_save_npy, labels))
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
    update_outputs(ctx, plan.job_id, "label_maps", [r.to_json() for r in records])
    return records


def load_label_map(ctx: PipelineContext, job_id: int, record: LabelMapRecord) -> npt.NDArray[np.uint8]:
    path = ctx.work_dir(job_id) / record.file
    try:
        data: npt.NDArray[np.uint8] = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise PipelineError(f"job {job_id}: label map {path} is missing", reason="label_map_missing") from exc
    return data


# ------------------------------------------------------------------------------------------ encoding


def algorithm_info(
    task: str, mode: str, models: Sequence[Mapping[str, Any]], roi_subset: Sequence[str] | None
) -> Any:
    """Algorithm Identification of a label map: task, reference version, models and their checkpoints."""
    from dicom_node.outputs.seg import AlgorithmInfo
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
    result: Any,
    seg: SegConfig,
    segmentation_type: str,
) -> Any:
    """Encode the labels of an ``inference.engine.SegmentationResult`` on ``volume`` as a SEG."""
    from dicom_node.outputs.seg import SegmentationType, encode_seg, seg_options, segments_from_catalog

    algorithm = algorithm_info(
        str(result.task),
        str(result.mode),
        [dict(vars(m)) for m in result.models],
        list(result.roi_subset) if result.roi_subset else None,
    )
    options = seg_options(seg, SegmentationType(segmentation_type))
    return encode_seg(volume, labels, segments_from_catalog(str(result.task)), algorithm, options)


def write_dicom_atomically(dataset: Dataset, path: Path) -> Path:
    return atomic_write(path, partial(_save_dicom, dataset))


def _validate(ctx: PipelineContext, path: Path) -> int:
    """dciodvfy per ``seg.validate_with_dciodvfy``; returns the number of warnings."""
    import shutil

    from dicom_node.outputs.seg import validate_with_dciodvfy

    mode = ctx.config.seg.validate_with_dciodvfy
    if mode == "never" or (mode == "auto" and shutil.which("dciodvfy") is None):
        return 0
    seg = ctx.config.seg
    report = validate_with_dciodvfy(
        path, max_frames=seg.validation_max_frames, timeout_s=seg.validation_timeout_s
    )
    return len(report.warnings)


def free_space_ok(ctx: PipelineContext, folder: Path) -> bool:
    """Whether the file system of ``folder`` has at least ``storage.min_free_space_mb`` free."""
    folder.mkdir(parents=True, exist_ok=True)
    return ctx.free_space_probe(folder) >= ctx.config.storage.min_free_space_mb * 1024 * 1024


def check_free_space(ctx: PipelineContext, folder: Path, consequence: str) -> None:
    """Raise :class:`PipelineError` (reason ``out_of_resources``) when ``folder`` is below the watermark."""
    if not free_space_ok(ctx, folder):
        free_mib = ctx.free_space_probe(folder) // (1024 * 1024)
        raise PipelineError(
            f"{consequence}: {free_mib} MiB free on the file system of {folder}, below the watermark of "
            f"{ctx.config.storage.min_free_space_mb} MiB (storage.min_free_space_mb)",
            reason=OUT_OF_RESOURCES,
        )


def encode_stage(ctx: PipelineContext, converted: Converted) -> list[SegOutput]:
    """Encode every saved label map as DICOM-SEG (one per Segmentation Type the destinations want), write
    it atomically to the job's outbox and return the outputs (also stored in ``Job.outputs['seg']``)."""
    from dicom_node.outputs.seg import (
        EmptySegmentationError,
        SegmentationType,
        encode_seg,
        seg_options,
        segments_from_catalog,
    )

    plan = converted.plan
    ctx.faults.pause("encoding", plan.job_id)
    check_free_space(ctx, ctx.outbox_root, f"job {plan.job_id}: SEG objects not written")
    records = [LabelMapRecord.of(r) for r in job_outputs(ctx, plan.job_id).get("label_maps", [])]
    if not records:
        raise PipelineError(f"job {plan.job_id}: no label maps recorded", reason="label_map_missing")
    outputs: list[SegOutput] = []
    folder = ctx.outbox_dir(plan.job_id)
    for record in records:
        if record.stack_index >= len(converted.volumes):
            raise PipelineError(
                f"job {plan.job_id}: label map {record.file} is for stack {record.stack_index + 1}, "
                f"the series now has {len(converted.volumes)} selected stack(s)",
                reason="stack_mismatch",
            )
        volume = converted.volumes[record.stack_index]
        labels = load_label_map(ctx, plan.job_id, record)
        segments = segments_from_catalog(record.task)
        algorithm = algorithm_info(record.task, record.mode, record.models, record.roi_subset)
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
                break
            name = f"{path_safe_uid(encoded.sop_instance_uid, 'SEG SOP Instance UID')}.dcm"
            dataset = encoded.dataset
            path = atomic_write(folder / name, partial(_save_dicom, dataset))
            encoded_s = time.perf_counter() - started
            warnings = _validate(ctx, path)
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
    update_outputs(ctx, plan.job_id, "seg", [o.to_json() for o in outputs])
    return outputs


def seg_outputs(ctx: PipelineContext, job_id: int) -> list[SegOutput]:
    return [SegOutput.of(o) for o in job_outputs(ctx, job_id).get("seg", [])]
