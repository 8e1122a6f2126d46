"""``segnode serve`` as a real subprocess for end-to-end tests, with a loopback configuration, and read-only
access to its audit database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from dicom_node.audit.database import Database
from dicom_node.audit.tables import Delivery, Event, Job

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "data" / "models"


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


class SegNode:
    """A SegNode configured to receive from Orthanc and send its SEG objects back to it."""

    AE_TITLE = "SEGNODE"

    def __init__(self, folder: Path, port: int, orthanc_dicom_port: int, **pipeline: Any) -> None:
        self.folder = folder
        self.port = port
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "segnode.yaml"
        self.log_path = folder / "segnode.log"
        self.db_url = f"sqlite:///{folder / 'segnode.db'}"
        settings: dict[str, Any] = {
            "node": {
                "ae_titles": [
                    {
                        "ae_title": self.AE_TITLE,
                        "allowed_callers": [{"ae_title": "ORTHANC", "host": "127.0.0.1"}],
                    }
                ]
            },
            "network": {"bind_address": "127.0.0.1", "port": port},
            "storage": {"spool_dir": str(folder / "spool"), "min_free_space_mb": 0},
            "completion": {"quiet_period_s": 10, "on_association_release": True},
            "database": {"url": self.db_url},
            "inference": {"weights_dir": str(MODELS), "device": "cpu"},
            "destinations": {
                "orthanc": {
                    "ae_title": "ORTHANC",
                    "host": "127.0.0.1",
                    "port": orthanc_dicom_port,
                    "retry": {"initial_delay_s": 1.0, "factor": 1.5, "max_delay_s": 3.0, "max_total_s": 900},
                }
            },
            "sending": {"calling_ae_title": self.AE_TITLE, "connect_timeout_s": 3, "acse_timeout_s": 10},
            "routes": [
                {
                    "name": "mr_total",
                    "match": {"modality": "MR", "calling_ae_title": "ORTHANC"},
                    "action": {"tasks": ["total_mr"], "destinations": ["orthanc"]},
                }
            ],
            "pipeline": {
                "work_dir": str(folder / "work"),
                "outbox_dir": str(folder / "outbox"),
                "poll_interval_s": 0.2,
                **pipeline,
            },
        }
        self.config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self._db: Database | None = None

    # -- process -----------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 60) -> None:
        assert self.process is None
        log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from dicom_node.cli import main; raise SystemExit(main())",
                "serve",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env=env,
        )

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"segnode serve exited:\n{self.log_text()[-3000:]}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, timeout_s, f"segnode serve on port {self.port}")

    def stop(self) -> int:
        """SIGTERM (a clean stop); returns the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: the node dies mid-work, as in a power cut of the process."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    # -- database (read-only) ----------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.db_url)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def jobs(self, series_uid: str | None = None) -> list[Job]:
        with self.db.read() as session:
            statement = select(Job).order_by(Job.id)
            if series_uid:
                statement = statement.where(Job.series_instance_uid == series_uid)
            return list(session.scalars(statement))

    def job(self, job_id: int) -> Job:
        with self.db.read() as session:
            return session.get_one(Job, job_id)

    def events(self, job_id: int, what: str | None = None) -> list[Event]:
        with self.db.read() as session:
            statement = select(Event).where(Event.job_id == job_id).order_by(Event.id)
            if what:
                statement = statement.where(Event.what == what)
            return list(session.scalars(statement))

    def node_events(self, what: str) -> list[Event]:
        with self.db.read() as session:
            return list(session.scalars(select(Event).where(Event.what == what).order_by(Event.id)))

    def deliveries(self, job_id: int) -> list[Delivery]:
        with self.db.read() as session:
            return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id)))

    def timings(self, job_id: int) -> dict[str, Any]:
        raw = self.job(job_id).stage_timings
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data

    def outputs(self, job_id: int) -> dict[str, Any]:
        raw = self.job(job_id).outputs
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data
