"""A ``segnode serve`` with its HTTP service (API, metrics, dashboard) and a destination Orthanc that starts
down, for the operations tests; an HTTP client with credentials; a parser of the Prometheus text."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client.parser import text_string_to_metric_families

from tests.support import scu
from tests.support.orthanc import Orthanc
from tests.support.paths import PD_TRA, T2_SAG
from tests.support.ports import free_port
from tests.support.series import modified_copies
from tests.support.serve import JOB_TIMEOUT_S, SegNode
from tests.support.waiting import wait_until

#: Patient data written into the copies sent to the node: none of it may leave the node over HTTP.
PATIENT_ID = "PHI-ID-4711"
PATIENT_NAME = "Doe^Jane^Phiwatch"
BIRTH_DATE = "19470203"
PASSWORDS = {"admin": "admin-secret-1f2e", "viewer": "viewer-secret-9a8b"}
TOKEN = "scrape-token-77c1d0"
ENVIRONMENT = {
    "SEGNODE_ADMIN_PASSWORD": PASSWORDS["admin"],
    "SEGNODE_VIEWER_PASSWORD": PASSWORDS["viewer"],
    "SEGNODE_API_TOKEN": TOKEN,
}


def patient_copies(folder: Path, target: Path) -> list[Path]:
    """Copies of a series with the patient data above (the node keeps name and birth date here)."""
    return modified_copies(
        folder, target, PatientID=PATIENT_ID, PatientName=PATIENT_NAME, PatientBirthDate=BIRTH_DATE
    )


def send_series(port: int, files: list[Path], calling: str = "ORTHANC") -> str:
    """C-STORE the files over one association (every status Success); returns the Series Instance UID."""
    assert scu.send_series(port, files, calling) == [0x0000] * len(files)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Api:
    """HTTP client of the node; every answer is kept (``seen``) for the patient data check."""

    base: str
    seen: list[bytes] = field(default_factory=list)

    @staticmethod
    def basic(user: str, password: str | None = None) -> str:
        secret = PASSWORDS.get(user, "") if password is None else password
        return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()

    def request(
        self,
        method: str,
        path: str,
        auth: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", auth)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                result = Answer(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as exc:
            result = Answer(exc.code, exc.read(), dict(exc.headers))
        except (urllib.error.URLError, ConnectionError) as exc:  # not listening (yet)
            return Answer(0, str(exc).encode(), {})
        self.seen.append(result.body)
        return result

    def get(self, path: str, auth: str | None = None) -> Answer:
        return self.request("GET", path, auth)

    def admin(self, path: str) -> Any:
        answer = self.get(path, self.basic("admin"))
        assert answer.status == 200, (path, answer.status, answer.body[:500])
        return answer.json()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics`` as {(name, sorted labels): value} (read with the scrape token)."""
        answer = self.get("/metrics", f"Bearer {TOKEN}")
        assert answer.status == 200, answer.body[:500]
        samples = {}
        for family in text_string_to_metric_families(answer.body.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def engine_state(self) -> str | None:
        """The engine check of /api/ready (None while the HTTP service does not answer yet)."""
        answer = self.get("/api/ready", self.basic("viewer"))
        if answer.status not in (200, 503):
            return None
        return str(next(c for c in answer.json()["checks"] if c["name"] == "engine")["state"])

    def job_state(self, job_id: int) -> str:
        return str(self.admin(f"/api/jobs/{job_id}")["state"])


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class OpsStack:
    tmp: Path
    orthanc: Orthanc
    node: SegNode
    api: Api
    http_port: int
    series: dict[str, str]
    jobs: dict[str, int]
    metrics_before: dict[Any, float]
    metrics_failed: dict[Any, float]


def ops_keys(http_port: int) -> dict[str, Any]:
    """The e2e node's configuration changes: the HTTP service, and a destination that gives up at once."""
    return {
        "destinations.orthanc.retry": {"initial_delay_s": 0.5, "max_attempts": 1},
        "privacy": {"store_patient_name": True, "store_patient_birth_date": True},
        "http": {
            "enabled": True,
            "bind_address": "127.0.0.1",
            "port": http_port,
            "users": [
                {"name": "admin", "role": "admin", "password_env": "SEGNODE_ADMIN_PASSWORD"},
                {"name": "viewer", "role": "read_only", "password_env": "SEGNODE_VIEWER_PASSWORD"},
            ],
            "tokens": [{"name": "prometheus", "role": "read_only", "token_env": "SEGNODE_API_TOKEN"}],
            "dashboard_refresh_s": 1,
            "destination_echo_interval_s": 1,
        },
    }


@contextmanager
def ops_stack(tmp: Path) -> Iterator[OpsStack]:
    """The node running with Orthanc down; two series sent: the first job fails at sending (Orthanc down),
    the second at segmenting (the test-only failpoint fails its inference: no model run needed)."""
    port, http_port = free_port(), free_port()
    orthanc = Orthanc(tmp / "orthanc", {"segnode": ("SEGNODE", "127.0.0.1", port)})
    node = SegNode(tmp / "segnode", port, orthanc.dicom_port, **ops_keys(http_port))
    node.env.update(ENVIRONMENT)
    pd_uid = str(pydicom.dcmread(next(PD_TRA.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
    try:
        node.start(timeout_s=120, faults={"fail_prediction_series": [pd_uid]})
        api = Api(f"http://127.0.0.1:{http_port}")
        wait_until(lambda: api.engine_state() == "loaded", 300, "the engine's models loaded")
        before = api.metrics()
        series, jobs = {}, {}
        for name, folder in (("t2", T2_SAG), ("pd", PD_TRA)):
            series[name] = send_series(port, patient_copies(folder, tmp / "sent" / name))
        for name, uid in series.items():
            path = f"/api/jobs?series={uid}&state=failed"
            found = wait_until(
                lambda path=path: api.admin(path), JOB_TIMEOUT_S, f"job of series {name} failed"
            )
            jobs[name] = found[0]["id"]
        yield OpsStack(tmp, orthanc, node, api, http_port, series, jobs, before, api.metrics())
    finally:
        try:
            node.stop()
        finally:
            orthanc.stop()
            node.close()
