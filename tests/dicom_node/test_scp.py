"""The SCP over real TCP on 127.0.0.1 with a real pynetdicom SCU: storage, refusals, statuses, audit rows."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    EnhancedMRImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association as AssociationRow
from dicom_node.audit.tables import Instance, Series
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.paths import CINE, T2_SAG, TS9, series_files
from tests.support.scu import associate, rejection, store
from tests.support.series import dataset_bytes
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]


def test_pynetdicom_scu_series_lands_byte_identical_with_matching_audit_rows(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    files = series_files(T2_SAG)
    assoc = associate(node.port)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    # send the file's own bytes' data set: pydicom re-encodes it on the SCU side exactly as stored
    assert store(assoc, files) == [status.SUCCESS] * len(files)
    assoc.release()
    wait_until(lambda: audit.rows(node.db, AssociationRow)[0].result == "released", what="release recorded")

    instances = {r.sop_instance_uid: r for r in audit.rows(node.db, Instance)}
    assert len(instances) == len(files)
    for path in files:
        ds = pydicom.dcmread(path)
        row = instances[ds.SOPInstanceUID]
        stored = node.spool.root / row.spool_path
        assert (
            stored
            == node.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        )
        # the data set bytes are exactly those of the source file (sent in its own transfer syntax)
        assert dataset_bytes(stored) == dataset_bytes(path)
        assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert stored.stat().st_size == row.size_bytes
        assert row.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert row.series_instance_uid == ds.SeriesInstanceUID
    [assoc_row] = audit.rows(node.db, AssociationRow)
    assert (assoc_row.calling_ae_title, assoc_row.called_ae_title, assoc_row.peer_address) == (
        "PYSCU",
        "SEGNODE",
        "127.0.0.1",
    )
    assert assoc_row.instances_received == len(files)
    assert assoc_row.bytes_received == sum(r.size_bytes for r in instances.values())
    [series] = audit.rows(node.db, Series)
    assert series.instance_count == len(files) and series.state == "open"
    assert series.patient_name is None and series.patient_birth_date is None
    assert audit.events(node.db, "echo")[0].outcome == "success"
    assert not list((node.spool.root / ".incoming").iterdir())


def test_every_transfer_syntax_of_the_test_data_is_stored_unchanged(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    """The 9-transfer-syntax set: each instance is offered in its own transfer syntax and stored as
    received (compressed pixel data is never decoded or re-encoded)."""
    node = start_node(make_config())
    files = series_files(TS9)
    datasets = [pydicom.dcmread(p) for p in files]
    contexts = sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets})
    ae = AE(ae_title="PYSCU")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    for ds in datasets:
        rsp = assoc.send_c_store(ds)
        assert int(rsp.Status) == status.SUCCESS, ds.file_meta.TransferSyntaxUID
    assoc.release()
    by_uid = {r.sop_instance_uid: r for r in audit.rows(node.db, Instance)}
    for ds in datasets:
        row = by_uid[ds.SOPInstanceUID]
        assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        stored = node.spool.root / row.spool_path
        assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert dataset_bytes(stored) == dataset_bytes(files[datasets.index(ds)])


def test_leading_zero_uids_of_a_real_scanner_are_accepted(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    files = series_files(CINE)
    assoc = associate(node.port)
    assert store(assoc, files) == [status.SUCCESS] * len(files)
    assoc.release()
    [series] = audit.rows(node.db, Series)
    assert ".0" in series.series_instance_uid or "08975550791105350405" in series.series_instance_uid
    assert len(audit.rows(node.db, Instance)) == len(files)


def test_repeated_sop_instance_is_recorded_not_duplicated(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    files = series_files(T2_SAG)[:3]
    for _ in range(2):
        assoc = associate(node.port)
        assert store(assoc, files) == [status.SUCCESS] * 3
        assoc.release()
    instances = audit.rows(node.db, Instance)
    assert len(instances) == 3 and all(r.times_received == 2 for r in instances)
    assert len(audit.events(node.db, "instance_duplicate")) == 3
    [series] = audit.rows(node.db, Series)
    assert series.instance_count == 3
    stored = [p for p in node.spool.root.rglob("*.dcm")]
    assert len(stored) == 3


@pytest.mark.parametrize(
    ("calling", "called", "bind", "reason", "code"),
    [
        (
            "INTRUDER",
            "SEGNODE",
            "127.0.0.1",
            status.REASON_CALLING_AE_NOT_RECOGNISED,
            "calling_ae_not_recognised",
        ),
        (
            "PYSCU",
            "NOT_SEGNODE",
            "127.0.0.1",
            status.REASON_CALLED_AE_NOT_RECOGNISED,
            "called_ae_not_recognised",
        ),
        # RESEARCH_PACS may call SEGNODE_RESEARCH, not SEGNODE: per-called-AE rules
        (
            "RESEARCH_PACS",
            "SEGNODE",
            "127.0.0.1",
            status.REASON_CALLING_AE_NOT_RECOGNISED,
            "calling_ae_not_recognised",
        ),
        # FARAWAY is only allowed from 192.0.2.10
        (
            "FARAWAY",
            "SEGNODE",
            "127.0.0.1",
            status.REASON_CALLING_AE_NOT_RECOGNISED,
            "calling_address_not_allowed",
        ),
        # LOOPBACK is only allowed from 127.0.0.1, not 127.0.0.2
        (
            "LOOPBACK",
            "SEGNODE",
            "127.0.0.2",
            status.REASON_CALLING_AE_NOT_RECOGNISED,
            "calling_address_not_allowed",
        ),
    ],
)
def test_association_rejected_at_negotiation_with_audit_event(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    calling: str,
    called: str,
    bind: str,
    reason: int,
    code: str,
) -> None:
    node = start_node(make_config())
    assoc = associate(node.port, calling=calling, called=called, bind_address=bind)
    assert rejection(assoc) == (
        status.REJECTED_PERMANENT,
        status.SOURCE_SERVICE_USER,
        reason,
    )
    wait_until(lambda: len(audit.events(node.db, "association_rejected")) == 1, what="rejection event")
    [event] = audit.events(node.db, "association_rejected")
    assert event.reason == code and event.outcome == "refused" and event.calling_ae_title == calling
    [row] = audit.rows(node.db, AssociationRow)
    assert row.result == "rejected" and row.peer_address == bind


def test_allowed_callers_per_called_ae_title_on_one_port(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    for calling, called, bind in (
        ("RESEARCH_PACS", "SEGNODE_RESEARCH", "127.0.0.1"),
        ("PYSCU", "SEGNODE", "127.0.0.1"),
        ("LOOPBACK", "SEGNODE", "127.0.0.1"),
    ):
        assoc = associate(node.port, calling=calling, called=called, bind_address=bind)
        assert assoc.is_established, (calling, called)
        # the A-ASSOCIATE-AC answers with the called AE title the peer used
        assert assoc.acceptor.primitive is not None
        assert assoc.acceptor.primitive.called_ae_title.strip() == called
        assert int(assoc.send_c_echo().Status) == status.SUCCESS
        assoc.release()


def test_unaccepted_sop_class_and_transfer_syntax_refused_per_presentation_context(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    assoc = associate(
        node.port,
        contexts=[
            (MRImageStorage, [ExplicitVRLittleEndian]),
            (SecondaryCaptureImageStorage, [ExplicitVRLittleEndian]),
            (MRImageStorage, [HTJ2KLossless]),
        ],
    )
    assert assoc.is_established
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    assert (MRImageStorage, ExplicitVRLittleEndian) in accepted
    results = {(cx.abstract_syntax, tuple(cx.transfer_syntax)): cx.result for cx in assoc.rejected_contexts}
    assert results[(SecondaryCaptureImageStorage, (ExplicitVRLittleEndian,))] == 0x03
    assert results[(MRImageStorage, (HTJ2KLossless,))] == 0x04
    assoc.release()
    refused = {e.reason: e.detail for e in audit.events(node.db, "presentation_context_refused")}
    assert set(refused) == {"abstract_syntax_not_supported", "transfer_syntaxes_not_supported"}
    assert SecondaryCaptureImageStorage in refused["abstract_syntax_not_supported"]
    assert HTJ2KLossless in refused["transfer_syntaxes_not_supported"]


def test_sop_classes_and_transfer_syntaxes_follow_the_configuration(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(
        make_config(
            **{
                "accept.sop_classes": ["CTImageStorage"],
                "accept.transfer_syntaxes": ["ImplicitVRLittleEndian"],
            }
        )
    )
    assoc = associate(
        node.port,
        contexts=[
            (MRImageStorage, [ImplicitVRLittleEndian]),
            ("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian]),
        ],
    )
    assert assoc.is_established
    assert not [cx for cx in assoc.accepted_contexts if cx.abstract_syntax != Verification]
    results = sorted(cx.result for cx in assoc.rejected_contexts)
    assert results == [0x03, 0x04]
    assoc.release()


def test_tcp_nodelay_is_set_on_accepted_connections(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    assoc = associate(node.port)
    assert assoc.is_established
    assert node.server is not None
    [server_side] = node.server.active_associations
    sock = server_side.dul.socket
    assert sock is not None and sock.socket is not None
    assert sock.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assoc.release()


def test_status_out_of_resources_below_watermark_leaves_nothing(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    free = {"bytes": 10 * 1024 * 1024 * 1024}
    node = start_node(
        make_config(**{"storage.min_free_space_mb": 100}), free_space_probe=lambda _p: free["bytes"]
    )
    files = series_files(T2_SAG)[:4]
    assoc = associate(node.port)
    assert store(assoc, files[:2]) == [status.SUCCESS] * 2
    free["bytes"] = 100 * 1024 * 1024 + 1000  # the next instance would cross the watermark
    assert store(assoc, files[2:]) == [status.OUT_OF_RESOURCES] * 2
    assoc.release()
    assert len(list(node.spool.root.rglob("*.dcm"))) == 2
    assert not list(node.spool.root.rglob("*.part"))
    assert len(audit.rows(node.db, Instance)) == 2
    refused = audit.events(node.db, "instance_refused")
    assert len(refused) == 2 and all("0xA700" in (e.detail or "") for e in refused)
    # below the watermark, new associations are refused as transient congestion
    free["bytes"] = 1024
    assoc = associate(node.port)
    assert rejection(assoc) == (
        status.REJECTED_TRANSIENT,
        status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
        status.REASON_TEMPORARY_CONGESTION,
    )


def _modified(path: Path, **changes: Any) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"SeriesInstanceUID": "1.2.3/../../etc"}, "Series Instance UID"),
        ({"StudyInstanceUID": "1.2." + "3" * 70}, "longer than 64"),
        ({"SeriesInstanceUID": "1.2.abc"}, "not a DICOM UID"),
        ({"StudyInstanceUID": ""}, "Study Instance UID is"),
    ],
)
def test_status_cannot_understand_for_unusable_uids(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, change: dict[str, str], fragment: str
) -> None:
    node = start_node(make_config())
    ds = _modified(series_files(T2_SAG)[0], **change)
    assoc = associate(node.port)
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert int(rsp.Status) == status.CANNOT_UNDERSTAND
    [event] = audit.events(node.db, "instance_refused")
    assert fragment in (event.reason or "") and "0xC210" in (event.detail or "")
    assert not [p for p in node.spool.root.rglob("*") if p.is_file()]


def test_status_dataset_does_not_match_sop_class(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    """A C-STORE request naming Enhanced MR whose data set is a classic MR Image gets 0xA900."""
    node = start_node(make_config())
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(EnhancedMRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    [context] = assoc.accepted_contexts
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = EnhancedMRImageStorage
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = io.BytesIO(encode(ds, False, True))
    # pause the requestor's reactor as pynetdicom's own send_c_store does, then exchange the messages
    assoc._reactor_checkpoint.clear()
    wait_until(lambda: assoc._is_paused, what="requestor reactor paused")
    assoc.dimse.send_msg(request, context.context_id)
    _cx, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assoc.release()
    assert response is not None
    assert int(response.Status) == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not audit.rows(node.db, Instance)
    [event] = audit.events(node.db, "instance_refused")
    assert "0xA900" in (event.detail or "") and MRImageStorage in (event.reason or "")


def test_status_processing_failure_when_the_spool_cannot_be_written(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    # a plain file where the study folder must go: the rename fails (ENOTDIR), not for lack of space
    (node.spool.root / ds.StudyInstanceUID).write_bytes(b"not a folder")
    assoc = associate(node.port)
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert int(rsp.Status) == status.PROCESSING_FAILURE
    assert not list(node.spool.root.rglob("*.part"))
    assert not audit.rows(node.db, Instance)
    [event] = audit.events(node.db, "instance_refused")
    assert "0x0110" in (event.detail or "")


def test_associations_beyond_the_limit_are_rejected_and_audited(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config(**{"network.max_associations": 1}))
    first = associate(node.port)
    assert first.is_established
    second = associate(node.port)
    assert rejection(second) == (
        status.REJECTED_TRANSIENT,
        status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
        status.REASON_LOCAL_LIMIT_EXCEEDED,
    )
    first.release()
    wait_until(lambda: len(audit.events(node.db, "association_rejected")) == 1, what="rejection event")
    assert audit.events(node.db, "association_rejected")[0].reason == "local_limit_exceeded"


def test_deflated_transfer_syntax_is_stored_as_received(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    source = series_files(T2_SAG)[0]
    ds = pydicom.dcmread(source)
    assoc = associate(node.port, contexts=[(MRImageStorage, [DeflatedExplicitVRLittleEndian])])
    assert assoc.is_established
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    assoc.release()
    [row] = audit.rows(node.db, Instance)
    stored = node.spool.root / row.spool_path
    assert row.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert dataset_bytes(stored)[:2] != b"\x08\x00"  # deflated on the wire, deflated on disk
    back = pydicom.dcmread(stored)
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert back.PixelData == pydicom.dcmread(source).PixelData
