"""Disk housekeeping: retention of received instances and results, and jobs resumed when space returns.

**Retention** (``retention`` in the configuration). A job's files -- its work folder (label maps) and its
outbox folder (the SEG objects) -- are deleted ``retention.delivered_hours`` after the job ended ``done``
(its results were delivered, or there was nothing to send), and ``retention.failed_days`` after it ended
``failed``, ``cancelled`` or ``superseded`` (longer, so that an operator can still retry it). The spooled
instances of a series are deleted by the same rule once *every* job of the series has ended (superseded
jobs do not count; the job that superseded them decides), using the latest end time and the longer delay
where one job did not end ``done``. A series still receiving, a job not ended, a delivery still pending: their
files are never touched. Each deletion is an audit event (``retention_purged``); the audit database itself
is kept: rows are never deleted, so the history of a series stays readable after its pixels are gone.

**Space returned.** A job that failed for lack of disk space (reason ``out_of_resources``, e.g. while
encoding) is put back at the stage it failed in once the file system is above the watermark again
(:func:`resume_after_space_freed`), so an unattended node finishes it without an operator.

:class:`Housekeeping` runs both every ``retention.sweep_interval_s`` seconds in the service.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from config.errors import SegNodeError
from dicom_node.audit.tables import Instance, Job, Series, SeriesState
from dicom_node.durable import OUT_OF_RESOURCES
from dicom_node.jobs.context import PipelineContext, free_space_ok
from dicom_node.jobs.store import IllegalTransitionError, JobState

logger = logging.getLogger(__name__)

_ENDED = frozenset({JobState.done, JobState.failed, JobState.cancelled, JobState.superseded})


@dataclass
class SweepResult:
    """What one retention sweep deleted."""

    jobs: list[int] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def _delay(ctx: PipelineContext, state: JobState) -> timedelta:
    retention = ctx.config.retention
    if state is JobState.done:
        return timedelta(hours=retention.delivered_hours)
    return timedelta(days=retention.failed_days)


def _remove_tree(folder: Path) -> tuple[int, int]:
    """Delete a folder; returns (files, bytes) removed (0, 0 when it does not exist)."""
    if not folder.is_dir():
        return 0, 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    shutil.rmtree(folder)
    return len(files), size


def _remove_empty_parents(path: Path, root: Path) -> None:
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            return
        try:
            parent.rmdir()
        except OSError:
            return  # not empty (another series of the study) or already gone


class RetentionSweeper:
    """Deletes the files of ended jobs and their series after the configured delays (see the module)."""

    def __init__(self, ctx: PipelineContext) -> None:
        self.ctx = ctx

    def sweep(self, now: datetime | None = None) -> SweepResult:
        now = self.ctx.now() if now is None else now
        result = SweepResult()
        with self.ctx.db.read() as session:
            jobs = [
                (j.id, j.series_instance_uid, j.study_instance_uid, JobState(j.state), j.updated_at)
                for j in session.scalars(select(Job).order_by(Job.id))
            ]
            complete = set(
                session.scalars(
                    select(Series.series_instance_uid).where(Series.state == SeriesState.complete.value)
                )
            )
        for job_id, series, study, state, ended in jobs:
            if state in _ENDED and now - ended >= _delay(self.ctx, state):
                self._purge_job(job_id, series, study, state, result)
        by_series: dict[str, list[tuple[JobState, datetime, str]]] = {}
        for _job_id, series, study, state, ended in jobs:
            if state is not JobState.superseded:
                by_series.setdefault(series, []).append((state, ended, study))
        for series, live in sorted(by_series.items()):
            if series not in complete or any(state not in _ENDED for state, _e, _s in live):
                continue  # still receiving, or a job is still working or waiting to deliver
            worst = JobState.done if all(s is JobState.done for s, _e, _s in live) else JobState.failed
            latest = max(e for _s, e, _st in live)
            if now - latest >= _delay(self.ctx, worst):
                self._purge_series(series, live[0][2], worst, result)
        if result.jobs or result.series:
            logger.info(
                "retention: %d job folder(s), %d series deleted (%d files, %d bytes)",
                len(result.jobs),
                len(result.series),
                result.files,
                result.bytes,
            )
        return result

    def _purge_job(self, job_id: int, series: str, study: str, state: JobState, result: SweepResult) -> None:
        files = size = 0
        for folder in (self.ctx.work_dir(job_id), self.ctx.outbox_dir(job_id)):
            removed, freed = _remove_tree(folder)
            files, size = files + removed, size + freed
        if not files:
            return
        result.jobs.append(job_id)
        result.files, result.bytes = result.files + files, result.bytes + size
        self.ctx.audit.event(
            "retention_purged",
            "success",
            f"job {state}",
            job_id=job_id,
            study=study,
            series=series,
            detail=f"work and outbox folders of job {job_id} deleted: {files} file(s), {size} bytes",
        )

    def _purge_series(self, series: str, study: str, worst: JobState, result: SweepResult) -> None:
        with self.ctx.db.read() as session:
            paths = list(
                session.scalars(select(Instance.spool_path).where(Instance.series_instance_uid == series))
            )
        root = self.ctx.spool_root
        files = size = 0
        for relative in paths:
            path = root / relative
            try:
                size += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            files += 1
            _remove_empty_parents(path, root)
        if not files:
            return
        result.series.append(series)
        result.files, result.bytes = result.files + files, result.bytes + size
        self.ctx.audit.event(
            "retention_purged",
            "success",
            "series delivered" if worst is JobState.done else "series ended without delivery",
            study=study,
            series=series,
            detail=f"{files} spooled instance(s) deleted ({size} bytes); audit rows kept",
        )


def resume_after_space_freed(ctx: PipelineContext) -> list[int]:
    """Put jobs that failed for lack of disk space back at their stage once the disk has room again."""
    with ctx.db.read() as session:
        waiting = [
            (j.id, j.failed_stage)
            for j in session.scalars(
                select(Job).where(Job.state == JobState.failed.value, Job.reason == OUT_OF_RESOURCES)
            )
        ]
    if not waiting or not (free_space_ok(ctx, ctx.outbox_root) and free_space_ok(ctx, ctx.work_root)):
        return []
    resumed = []
    for job_id, stage in waiting:
        target = JobState(stage) if stage else JobState.queued
        try:
            ctx.jobs.transition(
                job_id, target, reason="space_freed", detail="disk space is back; job resumed"
            )
        except IllegalTransitionError as exc:
            logger.info("job %d not resumed: %s", job_id, exc)
            continue
        resumed.append(job_id)
    if resumed:
        logger.warning("disk space is back: job(s) %s resumed", ", ".join(map(str, resumed)))
    return resumed


class Housekeeping(threading.Thread):
    """Runs the retention sweep and :func:`resume_after_space_freed` every ``interval_s`` until stopped."""

    def __init__(
        self, ctx: PipelineContext, interval_s: float, on_resumed: Callable[[], None] | None = None
    ) -> None:
        super().__init__(name="segnode-housekeeping", daemon=True)
        self.ctx = ctx
        self.interval_s = interval_s
        self.sweeper = RetentionSweeper(ctx)
        self.on_resumed = on_resumed
        self._stop_event = threading.Event()

    def run_once(self) -> None:
        if self.ctx.config.retention.enabled:
            self.sweeper.sweep()
        if resume_after_space_freed(self.ctx) and self.on_resumed is not None:
            self.on_resumed()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.run_once()
            except (SQLAlchemyError, OSError, SegNodeError):
                logger.exception("housekeeping failed; retrying at the next tick")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
