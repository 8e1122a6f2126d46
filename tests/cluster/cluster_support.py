"""A SegNode cluster for tests: real PostgreSQL, Redis and Orthanc on loopback ports, receivers
(``segnode serve --role receiver``) and workers (``segnode worker``) as subprocesses sharing one folder as
their "shared file system"."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from dicom_node.audit.database import Database
from dicom_node.audit.tables import Event, Job
from dicom_node.jobs.store import JobState
from tests.support import audit
from tests.support.orthanc import Orthanc
from tests.support.paths import MODELS
from tests.support.postgres import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.serve import FAULTS_VARIABLE, NodeProcess, ServeProcess
from tests.support.settings import apply_overrides, write_settings
from tests.support.waiting import wait_until

#: A safety net for one job with the tiny models on a loaded 2-core machine (never waited out when passing).
JOB_TIMEOUT_S = 600
CALLER = "PYSCU"


def cluster_settings(
    folder: Path, db_url: str, broker_url: str, orthanc_port: int, **keys: Any
) -> dict[str, Any]:
    """A cluster's configuration: receivers on port 0 (each logs its port), the shared folders under
    ``folder``, short leases and reconcile delays so that failures are handled within a test."""
    shared = folder / "shared"
    settings: dict[str, Any] = {
        "node": {
            "ae_titles": [
                {"ae_title": "SEGNODE", "allowed_callers": [{"ae_title": CALLER}, {"ae_title": "ECHOSCU"}]}
            ]
        },
        "network": {"bind_address": "127.0.0.1", "port": 0},
        "storage": {"spool_dir": str(shared / "spool"), "min_free_space_mb": 0},
        "completion": {"quiet_period_s": 60, "on_association_release": True, "use_expected_count": False},
        "database": {"url": db_url},
        "inference": {"weights_dir": str(MODELS), "device": "cpu", "cpu_threads": 1},
        "destinations": {
            "orthanc": {
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc_port,
                "retry": {"initial_delay_s": 1.0, "factor": 1.5, "max_delay_s": 3.0, "max_total_s": 600},
            }
        },
        "sending": {"calling_ae_title": "SEGNODE", "connect_timeout_s": 3, "acse_timeout_s": 10},
        "routes": [
            {
                "name": "mr_total",
                "match": {"modality": "MR"},
                "action": {"tasks": [{"name": "total_mr", "fast": True}], "destinations": ["orthanc"]},
            }
        ],
        "pipeline": {"work_dir": str(shared / "work"), "outbox_dir": str(shared / "outbox")},
        "seg": {"validate_with_dciodvfy": "never"},
        "cluster": {
            "broker_url": broker_url,
            "lease_s": 15,
            "heartbeat_s": 3,
            "reconcile_after_s": 5,
            "dispatch_interval_s": 0.3,
            "visibility_timeout_s": 20,
            "redelivery_check_s": 1,
        },
    }
    return apply_overrides(settings, keys)


class WorkerProcess(NodeProcess):
    """``segnode worker`` in a new process (its log: ``folder/worker.log``); awaited until it has started
    (its ``worker_started`` line): tasks published before its consumer connects wait in the broker."""

    def __init__(self, folder: Path, config_path: Path, queues: str = "convert,segment,encode,send") -> None:
        super().__init__(folder, "worker.log", "segnode worker", 4000)
        self.config_path = config_path
        self.queues = queues
        self.identity = ""

    def start(self, hold: Sequence[str] = (), timeout_s: float = 300) -> str:
        """Start the worker (its jobs held at the ``hold`` points, see ``dicom_node.failpoints``); returns
        its identity ``host:pid``."""
        assert self.process is None, "worker already running"
        extra: dict[str, str] = {}
        if hold:
            extra[FAULTS_VARIABLE] = json.dumps({"hold": self.hold_plan(hold)})
        command = [sys.executable, "-m", "dicom_node.cli", "worker", "--config", str(self.config_path)]
        command += ["--queues", self.queues]
        before = self.log_text().count("SegNode worker ")
        process = self.spawn(command, extra)
        self.identity = f"{socket.gethostname()}:{process.pid}"
        wait_until(
            lambda: self.log_text().count("SegNode worker ") > before,
            timeout_s,
            "segnode worker to start",
            process=process,
            details=self.log_tail,
        )
        return self.identity

    def stop(self, timeout_s: float = 120) -> None:
        """SIGTERM: Celery's warm shutdown (the running task finishes)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


@dataclass
class Cluster:
    """Servers shared by the tests of a module, and the database the cluster writes (read here)."""

    folder: Path
    postgres: PostgresServer
    redis: RedisServer
    orthanc: Orthanc
    config_path: Path
    receivers: list[ServeProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    _db: Database | None = None

    @classmethod
    def start(cls, folder: Path, receivers: int = 2, **keys: Any) -> Cluster:
        postgres = PostgresServer()
        redis = RedisServer(folder / "redis")
        orthanc = Orthanc(folder / "orthanc", {})
        cluster = cls(folder, postgres, redis, orthanc, folder / "segnode.yaml")
        try:
            postgres.start()
            redis.start()
            orthanc.start()
            settings = cluster_settings(folder, postgres.url, redis.url, orthanc.dicom_port, **keys)
            write_settings(cluster.config_path, settings)
            for n in range(receivers):
                receiver = ServeProcess(
                    folder / f"receiver{n + 1}", cluster.config_path, args=["--role", "receiver"]
                )
                cluster.receivers.append(receiver)
                receiver.start()  # one after the other: the first migrates the database
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def worker(self, name: str, queues: str = "convert,segment,encode,send") -> WorkerProcess:
        worker = WorkerProcess(self.folder / name, self.config_path, queues)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def stop(self) -> None:
        self.stop_workers()
        for receiver in self.receivers:
            receiver.stop()
        if self._db is not None:
            self._db.dispose()
        self.orthanc.stop()
        self.redis.stop()
        self.postgres.stop()

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.postgres.url)
        return self._db

    def details(self) -> str:
        parts = [r.log_tail() for r in self.receivers] + [w.log_tail() for w in self.workers]
        return "\n".join(parts)

    # -- what the database says ----------------------------------------------------------------------------

    def jobs(self, series_uid: str) -> list[Job]:
        return audit.jobs(self.db, series_uid)

    def events(self, job_id: int, what: str | None = None) -> list[Event]:
        return audit.events(self.db, what, job_id=job_id)

    def events_of_series(self, series_uid: str) -> list[Event]:
        return audit.events(self.db, series_uid=series_uid)

    def timings(self, job_id: int) -> dict[str, Any]:
        return audit.job_json(self.db, job_id, "stage_timings")

    def wait_for_job(self, series_uid: str, timeout_s: float = JOB_TIMEOUT_S) -> int:
        return audit.wait_for_job(self.db, series_uid, timeout_s, self.details)

    @property
    def reconcile_after_s(self) -> float:
        settings = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        return float(settings["cluster"]["reconcile_after_s"])

    def wait_past_dispatch(self, job_id: int, seconds: float, timeout_s: float = 120) -> None:
        """Wait until ``seconds`` have passed since the job's task was last dispatched (read once, now)."""
        with self.db.read() as session:
            dispatched = session.get_one(Job, job_id).dispatched_at
        assert dispatched is not None, f"job {job_id} has no task dispatched"
        wait_until(
            lambda: (datetime.now(UTC) - dispatched).total_seconds() >= seconds,
            timeout_s,
            f"{seconds:g} s since the task of job {job_id} was dispatched",
        )

    def wait_for_state(
        self, job_id: int, states: set[JobState], timeout_s: float = JOB_TIMEOUT_S
    ) -> JobState:
        """Wait until the job is in one of ``states`` (see :func:`tests.support.audit.wait_for_state`)."""
        return audit.wait_for_state(self.db, job_id, states, timeout_s, self.details)
