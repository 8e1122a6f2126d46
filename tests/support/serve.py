"""``segnode serve`` as a real subprocess, awaited until it answers C-ECHO; and the node of the end-to-end
tests, configured to receive from Orthanc and send its SEG objects back to it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dicom_node.audit.database import Database
from dicom_node.audit.tables import Delivery, Event, Job
from dicom_node.jobs.store import JobState
from tests.support import audit
from tests.support.dicom import wait_for_echo
from tests.support.orthanc import Orthanc
from tests.support.paths import MODELS
from tests.support.ports import free_port
from tests.support.settings import apply_overrides
from tests.support.waiting import wait_until

#: The line the node logs once its SCP listens (the port is the one it got, also for port 0).
LISTENING = re.compile(r"SegNode listening on [0-9.]+:(\d+)")
#: A safety net for one job with the tiny models on the CPU of a loaded machine (a passing run never waits
#: it out: the waits return as soon as the job is where it is awaited).
JOB_TIMEOUT_S = 900
#: The test-only fault plan of the node (``dicom_node.failpoints``).
FAULTS_VARIABLE = "SEGNODE_TEST_FAULTS"


def node_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SegNode settings (``SEGNODE__*``) or a fault plan, plus
    ``extra``: a node started by a test sees only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGNODE__") and k != FAULTS_VARIABLE}
    return env | dict(extra or {}) | {"PYTHONUNBUFFERED": "1"}


class NodeProcess:
    """A SegNode process a test starts (``segnode serve`` or ``segnode worker``): run in its own ``folder``,
    its output in the log file ``log_name`` there, its jobs held at the failpoints' hold points on request.

    ``name`` says in failure messages which process the log is of; ``tail_chars`` how much of it they show.
    """

    def __init__(self, folder: Path, log_name: str, name: str, tail_chars: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / log_name
        self.name = name
        self.tail_chars = tail_chars
        self.process: subprocess.Popen[bytes] | None = None

    def spawn(self, command: Sequence[str], extra_env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start ``command`` in the folder, its output appended to the log, in :func:`node_environment`."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=node_environment(extra_env),
            )
        return self.process

    @property
    def hold_dir(self) -> Path:
        return self.folder / "holds"

    def hold_plan(self, hold: Sequence[str]) -> dict[str, Any]:
        """The fault plan's ``hold`` entry for the hold points ``hold`` (the folder of their markers)."""
        self.hold_dir.mkdir(exist_ok=True)
        return {"stages": list(hold), "dir": str(self.hold_dir)}

    def wait_held(self, point: str, timeout_s: float = JOB_TIMEOUT_S) -> int:
        """Wait until a job is held at ``point`` (a stage or a failpoints hold point); returns its id."""

        def held() -> int | None:
            found = sorted(self.hold_dir.glob(f"{point}-*.held")) if self.hold_dir.is_dir() else []
            return int(found[0].stem.rsplit("-", 1)[1]) if found else None

        job_id: int = wait_until(
            held, timeout_s, f"a job held at {point}", process=self.process, details=self.log_tail
        )
        return job_id

    def release(self, point: str, job_id: int) -> None:
        """Let a job held at ``point`` go on."""
        (self.hold_dir / f"{point}-{job_id}.release").touch()

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as in a power cut or a crashed machine."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return f"{self.name}'s log ({self.log_path}):\n{self.log_text()[-self.tail_chars :]}"


class ServeProcess(NodeProcess):
    """``segnode serve`` in a new process, working directory ``folder`` (its log: ``folder/segnode.log``).

    ``config_path``: its ``--config`` (None: the embedded defaults); ``env``: extra environment variables
    (``SEGNODE__...`` settings); ``echo``: (called, calling) AE titles of the C-ECHO it is awaited with,
    a caller the configuration allows; ``options``: of ``segnode`` itself (``-vv``); ``args``: of ``serve``
    (``--role receiver``). ``start`` may be called
    again after ``stop`` or ``kill``.
    """

    def __init__(
        self,
        folder: Path,
        config_path: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        echo: tuple[str, str] = ("SEGNODE", "ECHOSCU"),
        options: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        super().__init__(folder, "segnode.log", "segnode serve", 3000)
        self.config_path = config_path
        self.env = dict(env or {})
        self.echo = echo
        self.options = list(options)
        #: More arguments of ``segnode serve`` itself (``--role receiver``).
        self.args = list(args)
        self.port = 0

    def start(
        self, timeout_s: float = 120, faults: Mapping[str, Any] | None = None, hold: Sequence[str] = ()
    ) -> int:
        """Start the node and return its port once it answers C-ECHO. ``faults``: a test-only fault plan
        (``dicom_node.failpoints``) for this run of the process only; ``hold``: stages in which its jobs
        stand still until :meth:`release` (see :meth:`wait_held`)."""
        assert self.process is None, "segnode serve already running"
        before = len(LISTENING.findall(self.log_text()))
        extra = dict(self.env)
        plan = dict(faults or {})
        if hold:
            plan["hold"] = self.hold_plan(hold)
            for marker in [*self.hold_dir.glob("*.held"), *self.hold_dir.glob("*.release")]:
                marker.unlink()  # of an earlier run
        if plan:
            extra[FAULTS_VARIABLE] = json.dumps(plan)
        command = [sys.executable, "-m", "dicom_node.cli", *self.options, "serve"]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        command += self.args
        process = self.spawn(command, extra)

        def listening_port() -> int | None:
            found = LISTENING.findall(self.log_text())
            return int(found[-1]) if len(found) > before else None

        self.port = wait_until(
            listening_port, timeout_s, "segnode serve to listen", process=process, details=self.log_tail
        )
        called, calling = self.echo
        wait_for_echo(
            self.port,
            called,
            "segnode serve",
            calling_ae=calling,
            timeout_s=timeout_s,
            process=process,
            details=self.log_tail,
        )
        return self.port

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (a clean stop); returns the exit code."""
        if self.process is None:
            return 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self.process = None
        return code


class SegNode(ServeProcess):
    """A SegNode configured to receive from Orthanc (calling AE title ORTHANC on 127.0.0.1) on ``port`` and
    send its SEG objects back to it, segmenting with task total_mr (its 3 mm model only when ``fast``: for
    tests of what happens around the inference, not of it); ``keys`` (``section.key``) change the
    configuration. Read-only access to its audit database."""

    AE_TITLE = "SEGNODE"

    def __init__(
        self, folder: Path, port: int, orthanc_dicom_port: int, fast: bool = False, **keys: Any
    ) -> None:
        super().__init__(folder, folder / "segnode.yaml", echo=(self.AE_TITLE, "ORTHANC"))
        self.port = port
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
                    "action": {
                        "tasks": [{"name": "total_mr", "fast": fast}],
                        "outputs": ["seg"],
                        "destinations": ["orthanc"],
                    },
                }
            ],
            "pipeline": {
                "work_dir": str(folder / "work"),
                "outbox_dir": str(folder / "outbox"),
                "poll_interval_s": 0.2,
            },
        }
        apply_overrides(settings, keys)
        assert self.config_path is not None
        self.config_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
        self._db: Database | None = None

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
        return audit.jobs(self.db, series_uid)

    def job(self, job_id: int) -> Job:
        return audit.job(self.db, job_id)

    def events(self, job_id: int, what: str | None = None) -> list[Event]:
        return audit.events(self.db, what, job_id=job_id)

    def node_events(self, what: str) -> list[Event]:
        return audit.events(self.db, what)

    def deliveries(self, job_id: int) -> list[Delivery]:
        return audit.deliveries(self.db, job_id)

    def timings(self, job_id: int) -> dict[str, Any]:
        return audit.job_json(self.db, job_id, "stage_timings")

    def outputs(self, job_id: int) -> dict[str, Any]:
        return audit.job_json(self.db, job_id, "outputs")

    def job_state(self, series_uid: str) -> JobState | None:
        """The state of the series' latest job (None: no job yet)."""
        jobs = self.jobs(series_uid)
        return JobState(jobs[-1].state) if jobs else None

    def wait_for_job(self, series_uid: str, timeout_s: float = 300) -> int:
        """The id of the series' latest job, once there is one."""
        return audit.wait_for_job(self.db, series_uid, timeout_s, self.log_tail)

    def wait_for_state(
        self, job_id: int, states: set[JobState], timeout_s: float = JOB_TIMEOUT_S
    ) -> JobState:
        """Wait until the job is in one of ``states`` (see :func:`tests.support.audit.wait_for_state`)."""
        return audit.wait_for_state(self.db, job_id, states, timeout_s, self.log_tail)


@contextlib.contextmanager
def orthanc_and_segnode(
    folder: Path, hold: Sequence[str] = (), fast: bool = False, **keys: Any
) -> Iterator[tuple[Orthanc, SegNode]]:
    """A real Orthanc that knows SegNode as modality ``segnode``, and ``segnode serve`` sending its results
    to that Orthanc, with the configuration ``keys`` set and jobs held in the ``hold`` stages; both
    answering before they are yielded, both stopped on leaving."""
    port = free_port()
    orthanc = Orthanc(folder / "orthanc", {"segnode": (SegNode.AE_TITLE, "127.0.0.1", port)})
    node = SegNode(folder / "segnode", port, orthanc.dicom_port, fast, **keys)
    try:
        orthanc.start()
        node.start(hold=hold)
        yield orthanc, node
    finally:
        node.stop()
        node.close()
        orthanc.stop()
