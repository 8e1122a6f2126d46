"""The node as a service: database (migrated), spool, SCP, completion timer, job pipeline; clean shutdown."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog, Clock, utc_now
from dicom_node.audit.tables import Instance
from dicom_node.failpoints import Failpoints
from dicom_node.http.metrics import NodeMetrics
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.retention import Housekeeping
from dicom_node.jobs.store import JobState, JobStore
from dicom_node.jobs.workers import Pipeline
from dicom_node.receiving.admission import private_sqlite_file
from dicom_node.receiving.completion import CompletionTimer, CompletionTracker, SeriesCompleter
from dicom_node.receiving.scp import Receiver, build_ae, handler_table
from dicom_node.receiving.server import SCPServer, close_connections, start_server
from dicom_node.receiving.spool import FreeSpaceProbe, Spool, disk_free_bytes
from dicom_node.receiving.tls import server_context

if TYPE_CHECKING:
    from dicom_node.cluster.dispatch import Dispatcher
    from dicom_node.http.runtime import Operations

LOG = logging.getLogger(__name__)


@dataclass
class NodeService:
    """Owns the one engine of the process and every long-lived part of the receiving node."""

    config: SegNodeConfig
    clock: Clock = utc_now
    free_space_probe: FreeSpaceProbe = disk_free_bytes
    completion_interval_s: float = 0.5
    shutdown_grace_s: float = 5.0
    #: Run the job pipeline (routing, conversion, inference, SEG, sending); False: receive only (tests).
    process_jobs: bool = True
    #: Test-only fault injection, from ``SEGNODE_TEST_FAULTS`` (``dicom_node.failpoints``); inert when unset.
    failpoints: Failpoints = field(default_factory=lambda: Failpoints.from_environment(os.environ))
    #: Retention sweep and disk space check (``dicom_node.jobs.retention``); 0: the caller drives it (tests).
    housekeeping_interval_s: float | None = None
    db: Database = field(init=False)
    audit: AuditLog = field(init=False)
    jobs: JobStore = field(init=False)
    spool: Spool = field(init=False)
    tracker: CompletionTracker = field(init=False)
    completer: SeriesCompleter = field(init=False)
    server: SCPServer | None = field(init=False, default=None)
    receiver: Receiver | None = field(init=False, default=None)
    _timer: CompletionTimer | None = field(init=False, default=None)
    pipeline: Pipeline | None = field(init=False, default=None)
    context: PipelineContext = field(init=False)
    housekeeping: Housekeeping | None = field(init=False, default=None)
    #: Prometheus metrics of this node (``dicom_node.http.metrics``); its hooks sit in the code paths.
    metrics: NodeMetrics = field(init=False)
    #: HTTP service, destination checks and notifications (``dicom_node.http.runtime``).
    operations: Operations | None = field(init=False, default=None)
    #: embedded: everything in this process; receiver: SCP, completion and the cluster's dispatcher
    #: (``dicom_node.cluster``), the stages run in ``segnode worker`` processes.
    role: str = "embedded"
    #: The receiver's dispatcher of tasks to the broker (``dicom_node.cluster.dispatch``).
    dispatcher: Dispatcher | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        cfg = self.config
        self.db = Database(cfg.database.url)
        self.metrics = NodeMetrics(cfg.destinations, self.clock)
        self.audit = AuditLog(self.db, cfg.config_hash(), cfg.privacy, self.clock)
        self.jobs = JobStore(self.audit, self.metrics)
        self.spool = Spool(
            cfg.storage.spool_dir, cfg.storage.min_free_space_mb * 1024 * 1024, self.free_space_probe
        )
        self.tracker = CompletionTracker(cfg.completion, self.clock)
        if self.role == "receiver":
            from dicom_node.cluster.completion import ClusterCompleter
            from dicom_node.cluster.worker import cluster_of

            cluster_of(cfg, "segnode serve --role receiver")
            self.process_jobs = False
            self.completer = ClusterCompleter(self.tracker, self.audit, self.jobs, self.metrics)
        else:
            self.completer = SeriesCompleter(self.tracker, self.audit, self.jobs, self.metrics)
        self.context = PipelineContext.create(
            cfg, self.audit, self.jobs, free_space_probe=self.free_space_probe, failpoints=self.failpoints
        )

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the node is not started")
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Check the structure catalog, migrate the database, clean the spool, restore open series, then
        listen."""
        from inference.catalog import validate_catalog

        validate_catalog()  # every label of every task has codes and a colour: its SEGs can be written
        private_sqlite_file(self.config.database.url)  # 0600 before SQLite creates it
        ssl_context = server_context(self.config.network.tls, self.config.network.acse_timeout_s)
        self.db.upgrade("head")
        removed = self.spool.prepare()
        with self.db.read() as session:
            recorded = set(session.scalars(select(Instance.spool_path)))
        for relative in self.spool.quarantine_unrecorded(recorded):
            self.audit.event(
                "instance_unacknowledged",
                "warning",
                "no_audit_row",
                detail=f"{relative}: complete in the spool but not recorded (the node stopped before the "
                "audit commit; the sender got no Success); moved to .unacknowledged/",
            )
        restored = self.completer.restore_open_series()
        resumable = self.jobs.resumable_jobs()
        self.audit.event(
            "node_started",
            "success",
            detail=f"{removed} temporary file(s) removed, {restored} open series restored, "
            f"{len(resumable)} resumable job(s)" + (" (cluster receiver)" if self.role == "receiver" else ""),
        )
        for job in resumable if self.role == "embedded" else ():
            if job.state is not JobState.queued:
                self.audit.event(
                    "job_interrupted",
                    "info",
                    "node_restart",
                    job_id=job.id,
                    study=job.study_instance_uid,
                    series=job.series_instance_uid,
                    detail=f"the node stopped while the job was in {job.state}; it resumes there",
                )
        receiver = self.receiver = Receiver(self.config, self.spool, self.audit, self.tracker, self.metrics)
        ae = build_ae(self.config)
        net = self.config.network
        self.server = start_server(
            ae,
            (net.bind_address, net.port),
            handler_table(receiver),
            ssl_context,
            request_timeout_s=net.acse_timeout_s,
            on_silent=receiver.connection_silent,
        )
        if self.completion_interval_s > 0:  # 0: the caller drives completer.run_once() (tests)
            self._timer = CompletionTimer(
                self.completer, self.completion_interval_s, also=[receiver.end_dead_associations]
            )
            self._timer.start()
        if self.process_jobs:
            self.pipeline = Pipeline(self.context)
            self.pipeline.start()
        self._start_dispatcher()
        self._start_housekeeping()
        try:
            self._start_operations()
        except BaseException:
            self.stop()
            raise
        LOG.warning(
            "SegNode listening on %s:%d%s as %s",
            net.bind_address,
            self.port,
            " (TLS)" if ssl_context is not None else "",
            ", ".join(a.ae_title for a in self.config.node.ae_titles),
        )

    def _start_housekeeping(self) -> None:
        """Retention and resumption after a full disk (a cluster: ``dicom_node.cluster.housekeeping``)."""
        interval = self.housekeeping_interval_s
        interval = self.config.retention.sweep_interval_s if interval is None else interval
        if interval <= 0:
            return
        pipeline = self.pipeline
        chores = Housekeeping
        if self.role == "receiver":
            from dicom_node.cluster.housekeeping import ClusterHousekeeping as chores
        self.housekeeping = chores(
            self.context, interval, on_resumed=pipeline.wake if pipeline is not None else None
        )
        self.housekeeping.start()

    def _start_dispatcher(self) -> None:
        """A receiver hands jobs to the cluster's workers through the broker (``dicom_node.cluster``)."""
        if self.role != "receiver" or self.config.cluster is None:
            return
        from dicom_node.cluster.app import Publisher
        from dicom_node.cluster.dispatch import Dispatcher
        from dicom_node.jobs.leases import JobLeases

        self.dispatcher = Dispatcher(
            JobLeases(self.jobs), self.config.cluster, Publisher(self.config.cluster)
        )
        self.dispatcher.start()

    def _start_operations(self) -> None:
        from dicom_node.http.runtime import Operations

        self.operations = Operations(
            self.config,
            self.audit,
            self.metrics,
            self.context,
            self._spool_free_bytes,
            self.pipeline,
        )
        self.operations.start()

    def _spool_free_bytes(self) -> int | None:
        try:
            return self.free_space_probe(self.spool.root)
        except OSError:
            return None

    @property
    def http_port(self) -> int:
        """The HTTP service's port (``http.enabled``)."""
        if self.operations is None:
            raise RuntimeError("the node is not started")
        return int(self.operations.http_port)

    def stop(self) -> None:
        """Stop listening, close the connections (a C-STORE being stored finishes first, at most
        ``shutdown_grace_s``), finish the completion timer, record the stop and release the engine."""
        if self.operations is not None:
            self.operations.stop()
            self.operations = None
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            assert self.receiver is not None
            close_connections(server, self.receiver.associations.wait_idle, self.shutdown_grace_s)
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self.housekeeping is not None:
            self.housekeeping.stop()
            self.housekeeping = None
        if self.pipeline is not None:
            self.pipeline.stop()
            self.pipeline = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        self.audit.event("node_stopped", "success")
        self.db.dispose()
        LOG.warning("SegNode stopped")
