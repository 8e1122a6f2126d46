"""A real Orthanc (Debian package ``orthanc``) for end-to-end tests: own JSON configuration, loopback ports,
own storage folder; started and stopped by the test; awaited until it answers on REST and C-ECHO; driven
through its REST API."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom

from tests.support.dicom import wait_for_echo
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def orthanc_binary() -> str:
    for candidate in ("/usr/sbin/Orthanc", shutil.which("Orthanc")):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("Orthanc is not installed (apt-get install orthanc)")


class Orthanc:
    """One Orthanc server; ``start``/``stop`` may be called repeatedly (storage and ports are kept).

    ``modalities``: the DICOM peers it may send to, ``{name: (AE title, host, port)}``.
    """

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

    def start(self, timeout_s: float = 120) -> None:
        """Start Orthanc and return once its REST API and its DICOM port (C-ECHO) answer."""
        assert self.process is None, "Orthanc already running"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [orthanc_binary(), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT
            )

        def rest_answers() -> bool:
            try:
                return bool(self.get("/system"))
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(rest_answers, timeout_s, "Orthanc's REST API", process=self.process, details=self.log_tail)
        wait_for_echo(
            self.dicom_port,
            self.AE_TITLE,
            "Orthanc",
            timeout_s=timeout_s,
            process=self.process,
            details=self.log_tail,
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"Orthanc's log ({self.log_path}):\n{text[-2000:]}"

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

    def seg_instances(self, study_uid: str, source_series_uid: str) -> list[tuple[str, str]]:
        """(Series, SOP Instance UID) of each SEG in the study that references the source series, sorted."""
        found = []
        for series in self.find_series(study_uid, "SEG"):
            for instance_id in series["Instances"]:
                ds = pydicom.dcmread(
                    io.BytesIO(self.instance_file(str(instance_id))), stop_before_pixels=True
                )
                if ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid:
                    found.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
        return sorted(found)
