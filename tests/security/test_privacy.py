"""What the node keeps private: file modes of the spool and the audit database, and patient names and
birth dates out of the logs."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Job, Series
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from tests.support.node import FrozenClock
from tests.support.paths import T2_SAG, series_files

StartNode = Callable[..., NodeService]


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets everyone read new files: the node must not rely on the service's umask."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def send_series(node: NodeService, datasets: list[pydicom.Dataset]) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    for ds in datasets:
        assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    assoc.release()


def test_spool_and_database_are_private_to_the_service_user(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, permissive_umask: None, tmp_path: Path
) -> None:
    config = make_config()
    node = start_node(config)
    send_series(node, [pydicom.dcmread(p) for p in series_files(T2_SAG)[:3]])
    root = node.spool.root
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) == 3 and len(folders) == 4  # root, .incoming, study, series
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in folders} == {
        str(p.relative_to(tmp_path)): "0o700" for p in folders
    }
    assert {oct(mode(p)) for p in files} == {"0o600"}
    database = tmp_path / "audit.db"
    companions = [p for p in tmp_path.iterdir() if p.name.startswith("audit.db")]
    assert database in companions and len(companions) >= 2  # WAL mode: -wal and -shm beside it
    assert {p.name: oct(mode(p)) for p in companions} == {p.name: "0o600" for p in companions}


def test_existing_wide_permissions_are_tightened_with_a_warning(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    permissive_umask: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)
    database = tmp_path / "audit.db"
    database.touch(mode=0o644)
    os.chmod(spool, 0o755)
    os.chmod(database, 0o644)
    with caplog.at_level(logging.WARNING, logger="dicom_node.receiving.admission"):
        start_node(make_config())
    assert mode(spool) == 0o700 and mode(database) == 0o600
    messages = [r.getMessage() for r in caplog.records if r.name == "dicom_node.receiving.admission"]
    assert any(str(spool) in m and "755" in m for m in messages)
    assert any(str(database) in m and "644" in m for m in messages)


def test_patient_name_and_birth_date_stay_out_of_the_logs(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A full receive (association, storage, duplicates, a refusal, release, completion, job creation)
    with every logger at DEBUG, pynetdicom's included: the name and birth date appear in no record."""
    name, birth = "Quillfeather^Zenobia^Ottoline", "19230917"
    clock = FrozenClock()
    node = start_node(
        make_config(**{"completion.on_association_release": True, "completion.use_expected_count": False}),
        clock=clock,
    )
    datasets = []
    for path in series_files(T2_SAG)[:4]:
        ds = pydicom.dcmread(path)
        ds.PatientName = name
        ds.PatientBirthDate = birth
        datasets.append(ds)
    broken = pydicom.dcmread(series_files(T2_SAG)[4])
    broken.PatientName = name
    broken.PatientBirthDate = birth
    broken.SeriesInstanceUID = "1.2.3/../../etc"
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ds).Status) for ds in [*datasets, datasets[0], broken]]
        assoc.release()
        assert statuses == [status.SUCCESS] * 5 + [status.CANNOT_UNDERSTAND]
        clock.advance(1)
        jobs = node.completer.run_once()
    assert len(jobs) == 1
    with node.db.read() as session:
        [series] = session.scalars(select(Series))
        assert len(list(session.scalars(select(Job)))) == 1
    assert series.patient_name is None and series.patient_birth_date is None
    assert len(caplog.records) > 20  # pynetdicom's DEBUG records were captured
    for record in caplog.records:
        text = record.getMessage()
        for secret in (name, birth, "Quillfeather", "Zenobia", "Ottoline"):
            assert secret not in text, f"{secret!r} logged by {record.name}: {text[:200]}"
