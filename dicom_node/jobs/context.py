"""What every stage of a job is given: the configuration, the audit log, the job store and the folders;
the error a stage raises when its job cannot go on; the free-space checks before a stage writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from config.errors import SegNodeError
from config.model import SegNodeConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.durable import OUT_OF_RESOURCES
from dicom_node.failpoints import Failpoints
from dicom_node.http.metrics import NodeMetrics
from dicom_node.jobs.store import JobStore
from dicom_node.receiving.spool import FreeSpaceProbe, disk_free_bytes


class PipelineError(SegNodeError):
    """A job cannot go on; ``reason`` is the stable code recorded as the job's failure reason."""

    reason = "pipeline_error"


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
    failpoints: Failpoints = field(default_factory=Failpoints)
    #: Stage latencies, inference times and send attempts for ``/metrics``.
    metrics: NodeMetrics = field(default_factory=NodeMetrics)

    @classmethod
    def create(
        cls,
        config: SegNodeConfig,
        audit: AuditLog,
        jobs: JobStore,
        free_space_probe: FreeSpaceProbe = disk_free_bytes,
        failpoints: Failpoints | None = None,
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
            failpoints=failpoints or Failpoints(),
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
