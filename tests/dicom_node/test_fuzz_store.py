"""Property-based fuzzing of the C-STORE path of a real node over TCP.

Generated data sets (crafted UIDs, arbitrary text, odd pixel attributes) and byte mutations of a real MR
instance are sent as raw C-STORE data sets on one association. For every example: the status is one of
the documented ones; a Success means the data set bytes lie complete at ``<Study>/<Series>/<SOP>.dcm``
under the spool root with their instance row; a refusal changes nothing in the spool; no temporary file
is left. Afterwards the node still answers a C-ECHO. Bounded: about 250 examples, well under a minute.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from config.loader import parse_config
from dicom_node.audit.tables import Instance
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from tests.support.mutations import EDIT_KINDS, mutate_bytes
from tests.support.node import raw_store
from tests.support.scu import associate
from tests.support.series import dataset_bytes
from tests.support.settings import node_settings

#: A real 64 x 64 MR image shipped with pydicom (small, so that many examples fit in the time budget).
SOURCE = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
DOCUMENTED = {status.SUCCESS, status.CANNOT_UNDERSTAND, status.DATASET_DOES_NOT_MATCH_SOP_CLASS}
UID_PATH = re.compile(r"^[0-9]+(\.[0-9]+)*/[0-9]+(\.[0-9]+)*/[0-9]+(\.[0-9]+)*\.dcm$")
FUZZ = settings(
    max_examples=125,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    folder = tmp_path_factory.mktemp("fuzz_node")
    config = parse_config(node_settings(folder), "fuzz.yaml", environ={})
    service = NodeService(config, completion_interval_s=0)
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def assoc(node: NodeService) -> Iterator[Association]:
    association = associate(node.port, contexts=[(MRImageStorage, [ExplicitVRLittleEndian])])
    assert association.is_established
    yield association
    association.release()


def spool_state(node: NodeService) -> dict[str, str]:
    return {
        str(p.relative_to(node.spool.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in node.spool.root.rglob("*")
        if p.is_file()
    }


def check_example(node: NodeService, assoc: Association, payload: bytes, sop_instance: str) -> None:
    before = spool_state(node)
    code = raw_store(assoc, payload, sop_instance)
    after = spool_state(node)
    assert code in DOCUMENTED, status.describe(code)
    assert not [name for name in after if name.endswith(".part")]
    assert all(UID_PATH.match(name) for name in after if not name.startswith(".incoming")), sorted(after)
    if code != status.SUCCESS:
        assert after == before
        return
    with node.db.read() as session:
        row = session.get(Instance, sop_instance.rstrip("\x00 "))
    assert row is not None
    stored = node.spool.root / row.spool_path
    assert stored.resolve().is_relative_to(node.spool.root.resolve())
    assert dataset_bytes(stored) == payload
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed <= {row.spool_path}  # an identical re-send changes nothing


SOURCE_BYTES = dataset_bytes(SOURCE)
SOURCE_UID = str(pydicom.dcmread(SOURCE, stop_before_pixels=True).SOPInstanceUID)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=1.0),
            st.sampled_from(EDIT_KINDS),
            st.binary(min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_byte_mutations_of_a_real_instance(
    node: NodeService, assoc: Association, edits: list[tuple[float, str, bytes]]
) -> None:
    data = mutate_bytes(SOURCE_BYTES, edits)
    # pynetdicom's SCU sends no data set PDV for empty bytes; test_bad_input_pdu sends that case itself
    assume(len(data) > 0)
    check_example(node, assoc, data, SOURCE_UID)


digits = st.text(alphabet="0123456789", min_size=1, max_size=12)
valid_uid = st.lists(digits, min_size=2, max_size=8).map(".".join).filter(lambda u: len(u) <= 64)
crafted_uid = st.one_of(
    st.text(alphabet="0123456789./\\ \x00-_~%:", min_size=0, max_size=70),
    st.sampled_from(["..", ".", "../../etc", "1.2/3", "1.2.3\\4", "/", "", "1.2." + "9" * 70, "1..2"]),
)
uid = st.one_of(valid_uid, valid_uid, crafted_uid)


@FUZZ
@given(
    sop=uid,
    study=uid,
    series=uid,
    sop_class=st.sampled_from([MRImageStorage, MRImageStorage, "1.2.840.10008.5.1.4.1.1.2", "1.2.3"]),
    name=st.text(max_size=80),
    patient_id=st.one_of(st.none(), st.text(alphabet="ABC123-", max_size=20)),
    rows=st.integers(min_value=0, max_value=65535),
    bits=st.sampled_from([1, 8, 12, 16, 32]),
    drop=st.sets(st.sampled_from(["PixelData", "Rows", "Columns", "SeriesInstanceUID", "Modality"])),
)
def test_generated_data_sets(
    node: NodeService,
    assoc: Association,
    sop: str,
    study: str,
    series: str,
    sop_class: str,
    name: str,
    patient_id: str | None,
    rows: int,
    bits: int,
    drop: set[str],
) -> None:
    ds = pydicom.dcmread(SOURCE)
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPClassUID = sop_class
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.Rows = rows
    ds.BitsAllocated = bits
    for keyword in drop:
        delattr(ds, keyword)
    try:
        payload = encode(ds, False, True)
    except (ValueError, TypeError, OverflowError):
        payload = None
    assume(payload is not None)
    assert payload is not None
    request_uid = sop if 0 < len(sop) <= 64 and "\\" not in sop else "1.2.826.0.1.3680043.10.1"
    check_example(node, assoc, payload, request_uid)


def test_the_node_still_serves_after_the_fuzzing(node: NodeService, assoc: Association) -> None:
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    ds = pydicom.dcmread(SOURCE)
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
