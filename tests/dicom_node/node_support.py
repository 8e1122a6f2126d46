"""Helpers of the receiving node's tests: test configurations, real MR series, clones, DCMTK tools."""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from config.loader import parse_config
from config.model import SegNodeConfig
from dicom_node.service import NodeService

ROOT = Path(__file__).resolve().parents[2]
MRI = ROOT / "tests" / "data" / "mri"
#: 19 sagittal T2 slices, Siemens Skyra, Explicit VR Little Endian.
T2_SAG = MRI / "prostatex" / "ProstateX-0000_3.000000-t2tsesag-87368"
#: 12 short-axis slices, GE Signa, UIDs with leading-zero components, Images in Acquisition 280.
CINE = MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX_phase1"
#: The same image in 9 transfer syntaxes.
TS9 = MRI / "dcm_qa_ts" / "ax_asc_35sl_9_transfer_syntaxes"


def series_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    assert files, f"no DICOM files in {folder}"
    return files


class FrozenClock:
    """An injectable clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def node_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A configuration document for tests: loopback, ephemeral port, files under ``tmp_path``."""
    data: dict[str, Any] = {
        "node": {
            "ae_titles": [
                {
                    "ae_title": "SEGNODE",
                    "allowed_callers": [
                        {"ae_title": "STORESCU"},
                        {"ae_title": "ECHOSCU"},
                        {"ae_title": "PYSCU"},
                        {"ae_title": "LOOPBACK", "host": "127.0.0.1"},
                        {"ae_title": "FARAWAY", "host": "192.0.2.10"},
                    ],
                },
                {"ae_title": "SEGNODE_RESEARCH", "allowed_callers": [{"ae_title": "RESEARCH_PACS"}]},
            ]
        },
        "network": {"bind_address": "127.0.0.1", "port": 0, "acse_timeout_s": 10, "network_timeout_s": 10},
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_space_mb": 0},
        "completion": {"quiet_period_s": 3600, "on_association_release": False},
        "database": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
    }
    for dotted, value in overrides.items():
        node: Any = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def dcmtk(name: str) -> str:
    """Path of a DCMTK tool (the Debian package), not a same-named Python console script."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
            if "dcmtk" in version.stdout.lower():
                return candidate
    pytest.fail(f"DCMTK's {name} is not installed (apt-get install dcmtk)")


def clone_series(source: Path, count: int, folder: Path) -> list[Path]:
    """``count`` copies of one real instance as a new series: new Study/Series/SOP Instance UIDs, instance
    numbers 1..count, slice positions 1 mm apart. Pixel data and all other attributes are the source's."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    study, series = generate_uid(), generate_uid()
    origin = [float(v) for v in ds.ImagePositionPatient]
    out: list[Path] = []
    for number in range(1, count + 1):
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + number]
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file: the bytes after the preamble and the file meta group."""
    with path.open("rb") as fp:
        pydicom.filereader.read_preamble(fp, force=False)
        pydicom.filereader._read_file_meta_info(fp)
        return fp.read()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for peers that cannot listen on port 0 and report it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def dcmtk_storescp(folder: Path, ae_title: str = "STORESCP") -> Iterator[int]:
    """DCMTK's storescp on 127.0.0.1 writing bit-preserving files into ``folder``; yields its port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "--bit-preserving", "-aet", ae_title, "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"storescp did not start on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def config_maker(tmp_path: Path) -> Callable[..., SegNodeConfig]:
    """``make(**overrides)``: a node configuration with its files under ``tmp_path`` (see node_settings)."""

    def make(**overrides: Any) -> SegNodeConfig:
        return parse_config(node_settings(tmp_path, **overrides), "test.yaml", environ={})

    return make


@contextlib.contextmanager
def running_nodes(**defaults: Any) -> Iterator[Callable[..., NodeService]]:
    """``start(config, **kwargs)`` starts a node (``defaults`` fill the keyword arguments not given); every
    node started is stopped on leaving."""
    started: list[NodeService] = []

    def start(config: SegNodeConfig, **kwargs: Any) -> NodeService:
        service = NodeService(config, **{**defaults, **kwargs})
        service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            if service.server is not None:
                service.stop()


_MESSAGE_IDS = itertools.count(1)


def raw_store(
    assoc: Association,
    payload: bytes,
    sop_instance: str,
    sop_class: str = MRImageStorage,
    syntax: str = ExplicitVRLittleEndian,
) -> int:
    """Send ``payload`` as the data set of a C-STORE-RQ, byte for byte, and return the response status."""
    [context] = [
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
    ]
    request = C_STORE()
    request.MessageID = next(_MESSAGE_IDS) % 65536
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = io.BytesIO(payload)
    # pause the requestor's reactor (as pynetdicom's send_c_store does) so the response reaches us
    assoc._reactor_checkpoint.clear()
    wait_for(lambda: assoc._is_paused, what="requestor reactor paused")
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _cx, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None, "no C-STORE-RSP"
    return int(response.Status)
