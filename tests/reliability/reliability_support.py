"""Helpers of the reliability tests: series with their own UIDs, a C-STORE SCU that records statuses, and
queries of a node's audit database."""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from sqlalchemy import select

from dicom_node.audit.database import Database
from dicom_node.audit.tables import Event, Instance, Job

ROOT = Path(__file__).resolve().parents[2]
MRI = ROOT / "tests" / "data" / "mri"
PROSTATEX = MRI / "prostatex"
#: 19 sagittal T2 slices (Siemens Skyra), the smallest series the tiny models segment quickly.
T2_SAG = PROSTATEX / "ProstateX-0000_3.000000-t2tsesag-87368"
T2_COR = PROSTATEX / "ProstateX-0000_5.000000-t2tsecor-03471"
PD_TRA = PROSTATEX / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
CINE = MRI / "sunnybrook_cardiac" / "SCD0000101_CINESAX_phase1"


def set_keys(config_path: Path, **keys: Any) -> None:
    """Change keys (``section.key``) of a node's YAML configuration file."""
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    for dotted, value in keys.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")


def files_of(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    assert files, f"no DICOM files in {folder}"
    return files


@dataclass(frozen=True)
class TestSeries:
    files: list[Path]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]


def renamed_series(source: Path, folder: Path, tag: str) -> TestSeries:
    """A copy of a real series with its own Study, Series and SOP Instance UIDs (derived from the source's
    UIDs and ``tag``, so the same call gives the same UIDs); every other attribute and the pixels are the
    source's. Each test gets a series no other test (or an earlier run against the same PACS) has sent."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    uids: list[str] = []
    study = series = ""
    for path in files_of(source):
        ds = pydicom.dcmread(path)
        study = generate_uid(entropy_srcs=[tag, str(ds.StudyInstanceUID)])
        series = generate_uid(entropy_srcs=[tag, str(ds.SeriesInstanceUID)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(ds.SOPInstanceUID)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
        uids.append(str(ds.SOPInstanceUID))
    return TestSeries(out, study, series, uids)


@dataclass
class StoreLog:
    """What a C-STORE SCU was told, per SOP Instance UID."""

    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def successes(self) -> list[str]:
        return [uid for uid, status in self.statuses.items() if status == 0x0000]


def associate(
    port: int, calling: str, called: str = "SEGNODE", files: list[Path] | None = None
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    syntaxes = sorted(
        {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files or []}
    )
    sop_classes = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files or []})
    for sop_class in sop_classes or ["1.2.840.10008.5.1.4.1.1.4"]:
        ae.add_requested_context(sop_class, syntaxes or ["1.2.840.10008.1.2.1"])
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(assoc: Association, files: list[Path], log: StoreLog, pause_s: float = 0.0) -> None:
    """C-STORE each file on an open association, recording the status (-1: no response); ``pause_s``
    between two files paces the sender like a modality sending as it reconstructs."""
    for n, path in enumerate(files):
        if n and pause_s:
            time.sleep(pause_s)
        ds = pydicom.dcmread(path)
        if not assoc.is_established:
            break
        response = assoc.send_c_store(ds)
        status = int(response.Status) if response is not None and "Status" in response else -1
        log.statuses[str(ds.SOPInstanceUID)] = status


def spooled(db: Database, spool: Path, sop_uids: list[str]) -> dict[str, bool]:
    """For each SOP Instance UID: recorded in the audit database with a spool file of the recorded SHA-256."""
    with db.read() as session:
        rows = {
            r.sop_instance_uid: r
            for r in session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)))
        }
    found = {}
    for uid in sop_uids:
        row = rows.get(uid)
        path = spool / row.spool_path if row is not None else None
        found[uid] = bool(
            row is not None
            and path is not None
            and path.is_file()
            and hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
        )
    return found


def series_events(db: Database, series_uid: str, what: str | None = None) -> list[Event]:
    with db.read() as session:
        statement = select(Event).where(Event.series_instance_uid == series_uid).order_by(Event.id)
        if what:
            statement = statement.where(Event.what == what)
        return list(session.scalars(statement))


def jobs_of(db: Database, series_uid: str) -> list[Job]:
    with db.read() as session:
        return list(
            session.scalars(select(Job).where(Job.series_instance_uid == series_uid).order_by(Job.id))
        )


def seg_instances_of(orthanc: object, study_uid: str, source_series_uid: str) -> list[tuple[str, str]]:
    """(Series, SOP Instance UID) of each SEG in Orthanc's study that references the source series."""
    found = []
    for series in orthanc.find_series(study_uid, "SEG"):  # type: ignore[attr-defined]
        for instance_id in series["Instances"]:
            data = io.BytesIO(orthanc.instance_file(str(instance_id)))  # type: ignore[attr-defined]
            ds = pydicom.dcmread(data, stop_before_pixels=True)
            if ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid:
                found.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return sorted(found)


@contextlib.contextmanager
def orthanc_and_segnode(tmp_path: Path, **keys: Any) -> Iterator[tuple[Any, Any]]:
    """A real Orthanc that knows SegNode as ``segnode``, and ``segnode serve`` (a subprocess) sending its
    results to that Orthanc, with the configuration ``keys`` set; both stopped on leaving."""
    from orthanc_server import Orthanc, free_port
    from segnode_process import SegNode

    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", {"segnode": ("SEGNODE", "127.0.0.1", port)})
    orthanc.start()
    node = SegNode(tmp_path / "segnode", port, orthanc.dicom_port)
    set_keys(node.config_path, **keys)
    try:
        node.start()
        yield orthanc, node
    finally:
        node.stop()
        node.close()
        orthanc.stop()
