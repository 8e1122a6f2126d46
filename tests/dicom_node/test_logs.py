"""Log records carry the association id and job id; patient names never reach the log."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association
from dicom_node.logs import ContextFilter, association_context, job_context
from dicom_node.service import NodeService
from tests.support.paths import T2_SAG, series_files

StartNode = Callable[..., NodeService]


def test_context_filter_adds_ids_to_records() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
    ContextFilter().filter(record)
    assert (record.association_id, record.job_id) == ("-", "-")
    with association_context(12), job_context(7):
        ContextFilter().filter(record)
        assert (record.association_id, record.job_id) == ("12", "7")
    ContextFilter().filter(record)
    assert record.association_id == "-"


def test_association_id_travels_in_records_and_no_patient_name_is_logged(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.DEBUG, logger="dicom_node")
    node = start_node(make_config(**{"storage.min_free_space_mb": 0}))
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    ds.PatientName = "Zyxwv^Quentin"
    ds.SOPInstanceUID = "1.2.3/4"  # refused with a warning that names the association
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assoc.send_c_store(ds)
    assoc.release()
    with node.db.read() as session:
        association_id = session.scalars(select(Association.id)).one()
    refused = [
        r for r in caplog.records if r.name == "dicom_node.receiving.scp" and "refused" in r.getMessage()
    ]
    assert refused and refused[0].association_id == str(association_id)  # type: ignore[attr-defined]
    assert "Zyxwv" not in caplog.text and "Quentin" not in caplog.text
