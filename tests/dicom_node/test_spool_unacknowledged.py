"""A complete file in the spool without an audit row (the node stopped between the rename into the spool and
the audit commit, so the sender got no Success) is moved aside at start, recorded, and the re-sent instance
is stored normally."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Event, Instance
from dicom_node.receiving import statuses as status
from dicom_node.receiving.spool import UNACKNOWLEDGED_DIR
from dicom_node.service import NodeService
from tests.support.paths import T2_SAG, series_files

StartNode = Callable[..., NodeService]


def test_unrecorded_spool_file_is_moved_aside_and_the_resent_instance_is_stored(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    config = make_config()
    node = start_node(config)
    source = series_files(T2_SAG)[0]
    ds = pydicom.dcmread(source)
    relative = node.spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    node.stop()
    # what a crash right after os.replace, before the audit commit, leaves behind
    (node.spool.root / relative).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, node.spool.root / relative)

    node = start_node(config)
    assert not (node.spool.root / relative).exists()
    kept = node.spool.root / UNACKNOWLEDGED_DIR / relative
    assert kept.read_bytes() == source.read_bytes()
    with node.db.read() as session:
        [event] = session.scalars(select(Event).where(Event.what == "instance_unacknowledged"))
        assert event.reason == "no_audit_row" and relative.as_posix() in (event.detail or "")
        assert list(session.scalars(select(Instance))) == []

    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    assoc.release()
    with node.db.read() as session:
        [row] = session.scalars(select(Instance))
    assert row.spool_path == relative.as_posix()
    stored = pydicom.dcmread(node.spool.root / relative)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData

    # a second start finds nothing more to move
    node.stop()
    node = start_node(config)
    with node.db.read() as session:
        assert len(list(session.scalars(select(Event).where(Event.what == "instance_unacknowledged")))) == 1
