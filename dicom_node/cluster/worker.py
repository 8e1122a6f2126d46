"""``segnode worker``: one Celery worker process that takes the tasks of some stages' queues.

One task at a time (Celery's solo pool: the task runs in the process that holds the engine), prefetch 1,
acknowledged after the stage's result is committed. A worker that takes the ``segment`` queue builds its
inference engine at start and keeps it warm for the life of the process, on the device given with
``--device`` (one worker per GPU); the other queues need only CPU. Routing decides everything about a task
from the database, so a worker needs no configuration beyond the cluster's file.

SIGTERM (``systemctl stop``, ``docker stop``) is Celery's warm shutdown: the worker takes no new task,
finishes the one it runs, and exits; its queues keep their tasks for the other workers (a drain).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from config.cluster import ClusterConfig
from config.errors import SegNodeError
from config.model import SegNodeConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.cluster.app import STAGES, Publisher, task_name
from dicom_node.cluster.tasks import StageRunner
from dicom_node.failpoints import Failpoints
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.segment import EngineLike
from dicom_node.jobs.store import JobStore

LOG = logging.getLogger(__name__)


class WorkerStartError(SegNodeError):
    reason = "worker_cannot_start"


def worker_identity() -> str:
    """How the audit names this process: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_queues(text: str) -> list[str]:
    """The stages of ``--queues convert,segment,...`` (in pipeline order); :class:`WorkerStartError` for a
    name that is not a stage."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in STAGES]
    if not names or unknown:
        raise WorkerStartError(
            f"--queues {text!r}: give stages among {', '.join(STAGES)} (comma-separated)"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    return [stage for stage in STAGES if stage in names]


def cluster_of(config: SegNodeConfig, command: str, source: str | None = None) -> ClusterConfig:
    """The cluster section; :class:`WorkerStartError` naming the file (``source``) and the key when the
    configuration is the embedded node's."""
    if config.cluster is None:
        raise WorkerStartError(
            f"{source or 'the configuration'}: cluster: missing; {command} needs the cluster section "
            "(cluster.broker_url, a PostgreSQL database.url, shared folders): without it the file configures "
            "the embedded node, which segnode serve runs alone, with no broker and no workers"
        )
    return config.cluster


class WorkerNode:
    """The database, stages and Celery worker of one ``segnode worker`` process."""

    def __init__(
        self,
        config: SegNodeConfig,
        stages: Sequence[str],
        device: str | None = None,
        failpoints: Failpoints | None = None,
        source: str | None = None,
    ) -> None:
        if device is not None:
            config = config.model_copy(
                update={"inference": config.inference.model_copy(update={"device": device})}
            )
        self.config = config
        self.cluster = cluster_of(config, "segnode worker", source)
        self.stages = list(stages)
        self.identity = worker_identity()
        self.db = Database(config.database.url)
        self.audit = AuditLog(self.db, config.config_hash(), config.privacy)
        failpoints = failpoints or Failpoints.from_environment(os.environ)
        self.ctx = PipelineContext.create(config, self.audit, JobStore(self.audit), failpoints=failpoints)
        self.publisher = Publisher(self.cluster)
        self._engine: EngineLike | None = None
        self.runner = StageRunner(
            self.ctx, self.cluster, self.publisher, self.identity, self.engine, failpoints.after_commit
        )
        for stage in self.stages:
            self._register(stage)

    def _register(self, stage: str) -> None:
        runner = self.runner

        def run(job_id: int) -> str:
            return runner.run(stage, int(job_id))

        self.publisher.app.task(name=task_name(stage), acks_late=True, ignore_result=True)(run)

    def engine(self) -> EngineLike:
        """The process's inference engine, built once."""
        if self._engine is None:
            from inference.engine import Engine

            self._engine = Engine(self.config.inference)
        return self._engine

    def check(self) -> None:
        """Refuse to start against a database a receiver has not migrated, or without the shared folders."""
        current, head = self.db.revision(), self.db.head_revision()
        if current != head:
            raise WorkerStartError(
                f"the database is at revision {current or 'none'}, this worker needs {head}: start a "
                "receiver (segnode serve --role receiver migrates it) before the workers"
            )
        spool = self.ctx.spool_root
        if not spool.is_dir():
            raise WorkerStartError(
                f"storage.spool_dir {spool} is not a folder on this machine: mount the shared file system "
                "the receivers write to at the same path"
            )
        for folder in (self.ctx.work_root, self.ctx.outbox_root):
            folder.mkdir(parents=True, exist_ok=True)

    def warm_up(self) -> None:
        """Import what the stages use and (a segment worker) load the models of ``inference.default_task``
        now, not with the first task."""
        import conversion.headers  # noqa: F401  (DICOM reading of every stage)

        if "encode" in self.stages:
            import highdicom  # noqa: F401
        if "segment" not in self.stages or not self.config.pipeline.warm_up:
            return
        warm = getattr(self.engine(), "warm_up", None)
        if warm is not None:
            warm(self.config.inference.default_task)

    def run(self, loglevel: str = "INFO") -> int:
        """Check, warm up, take tasks until a shutdown signal; returns the exit code."""
        self.check()
        self.warm_up()
        queues = self.cluster.queues.by_stage()
        names = ",".join(dict.fromkeys(queues[s] for s in self.stages))
        worker: Any = self.publisher.app.Worker(
            queues=names,
            pool="solo",
            concurrency=1,
            hostname=f"segnode-{os.getpid()}@{socket.gethostname()}",
            without_mingle=True,
            without_gossip=True,
            loglevel=loglevel,
            quiet=True,
        )
        self.audit.event(
            "worker_started",
            "success",
            detail=f"worker {self.identity} takes {', '.join(self.stages)} (queues {names}); "
            f"device {self.config.inference.device}",
        )
        self.runner.heartbeat.start()
        LOG.warning("SegNode worker %s taking %s", self.identity, names)
        try:
            worker.start()
        finally:
            self.runner.heartbeat.stop()
            self.audit.event("worker_stopped", "success", detail=f"worker {self.identity}")
            self.db.dispose()
        return int(getattr(worker, "exitcode", 0) or 0)
