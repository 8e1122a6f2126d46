"""A real Orthanc (Debian package ``orthanc``) for end-to-end tests: own JSON configuration, loopback ports,
own storage folder; started and stopped by the test; driven through its REST API."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def orthanc_binary() -> str:
    for candidate in ("/usr/sbin/Orthanc", shutil.which("Orthanc")):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("Orthanc is not installed (apt-get install orthanc)")


class Orthanc:
    """One Orthanc server; ``start``/``stop`` may be called repeatedly (storage and ports are kept)."""

    AE_TITLE = "ORTHANC"

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, str, int]]) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.config_path = folder / "orthanc.json"
        self.log_path = folder / "orthanc.log"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "segnode-e2e",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "OverwriteInstances": True,
            "Plugins": [],
            "SaveJobs": False,
            "StableAge": 1,
            "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 60) -> None:
        assert self.process is None, "Orthanc already running"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [orthanc_binary(), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"Orthanc did not start (see {self.log_path}):\n{self.log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        while True:  # the DICOM port too
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.dicom_port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"Orthanc's DICOM port {self.dicom_port} did not open")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    # -- REST --------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "") -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(data)
            return data

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self._request("POST", path, json.dumps(payload).encode("utf-8"), "application/json")

    def put(self, path: str, payload: Any) -> Any:
        return self._request("PUT", path, json.dumps(payload).encode("utf-8"), "application/json")

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc resources with this DICOM UID (``POST /tools/lookup`` takes the UID as plain text)."""
        found: list[dict[str, Any]] = self._request(
            "POST", "/tools/lookup", uid.encode("ascii"), "text/plain"
        )
        return found

    def upload(self, files: list[Path]) -> str:
        """Upload DICOM files; returns the Orthanc id of their series."""
        series = set()
        for path in files:
            answer = self._request("POST", "/instances", path.read_bytes(), "application/dicom")
            series.add(answer["ParentSeries"])
        assert len(series) == 1, f"files of {len(series)} series uploaded"
        return series.pop()

    def store_to(self, modality: str, orthanc_id: str) -> Any:
        """C-STORE a resource to a configured modality (synchronously)."""
        return self.post(f"/modalities/{modality}/store", {"Resources": [orthanc_id], "Synchronous": True})

    def find_series(self, study_uid: str, modality: str) -> list[dict[str, Any]]:
        """Series of a study with the given Modality, with their instances."""
        ids = self.post(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}},
        )
        return [self.get(f"/series/{i}") for i in ids]

    def instance_file(self, orthanc_id: str) -> bytes:
        data: bytes = self.get(f"/instances/{orthanc_id}/file")
        return data
