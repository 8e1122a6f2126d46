"""Bad input on the C-STORE path, over real TCP with a real pynetdicom SCU.

Every case gets its documented status (docs/conformance-statement.md), leaves nothing in the spool and no
instance row, is recorded as an ``instance_refused`` audit event, and the node keeps serving: a C-ECHO on
the same association succeeds afterwards. Data sets are sent as raw DIMSE messages where pynetdicom's SCU
would refuse to encode them.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    Verification,
)
from sqlalchemy import select

from config.model import SegNodeConfig
from conversion import NotSegmentableError, Reason, load_series
from dicom_node.audit.tables import Event, Instance, Series
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from dicom_node.uids import InvalidUIDError, path_safe_uid
from tests.support import audit, scu
from tests.support.node import raw_store
from tests.support.paths import T2_SAG, series_files
from tests.support.scu import Contexts
from tests.support.series import clone_series, dataset_bytes

StartNode = Callable[..., NodeService]


def associate(node: NodeService, contexts: Contexts | None = None) -> Association:
    """An established association proposing ``contexts`` (default: MR Image Storage, Explicit VR LE)."""
    assoc = scu.associate(node.port, contexts=contexts or [(MRImageStorage, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    return assoc


def stored_files(node: NodeService) -> list[Path]:
    return sorted(p for p in node.spool.root.rglob("*") if p.is_file())


def instance_count(node: NodeService) -> int:
    with node.db.read() as session:
        return len(list(session.scalars(select(Instance))))


def assert_refused_cleanly(node: NodeService, assoc: Association, code: int, fragment: str) -> None:
    """The last refusal has ``code`` and ``fragment``; the spool is empty; the association still works."""
    event = audit.events(node.db, "instance_refused")[-1]
    assert status.describe(code) == event.detail
    assert fragment in (event.reason or ""), event.reason
    assert stored_files(node) == []
    assert instance_count(node) == 0
    assert int(assoc.send_c_echo().Status) == status.SUCCESS


@pytest.fixture
def node(make_config: Callable[..., SegNodeConfig], start_node: StartNode) -> NodeService:
    return start_node(make_config())


@pytest.fixture
def assoc(node: NodeService) -> Iterator[Association]:
    association = associate(
        node, [(MRImageStorage, [ExplicitVRLittleEndian]), (MRImageStorage, [ImplicitVRLittleEndian])]
    )
    yield association
    if association.is_established:
        association.release()


@pytest.fixture(scope="module")
def source() -> tuple[bytes, str]:
    """The encoded data set (Explicit VR Little Endian) of a real MR instance and its SOP Instance UID."""
    path = series_files(T2_SAG)[0]
    return dataset_bytes(path), str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _element_offset(data: bytes, tag: tuple[int, int], vr: bytes) -> int:
    """Offset of an Explicit VR Little Endian element header in ``data``."""
    offset = data.find(struct.pack("<HH", *tag) + vr)
    assert offset >= 0, f"({tag[0]:04X},{tag[1]:04X}) not in the data set"
    return offset


def _truncated_in_pixel_data(data: bytes) -> bytes:
    return data[:-1000]


def _truncated_in_header(data: bytes) -> bytes:
    return data[:300]


def _pixel_length_beyond_data(data: bytes) -> bytes:
    offset = _element_offset(data, (0x7FE0, 0x0010), b"OW")
    (length,) = struct.unpack_from("<L", data, offset + 8)
    return data[: offset + 8] + struct.pack("<L", length + 64) + data[offset + 12 :]


def _short_element_length_beyond_data(data: bytes) -> bytes:
    # the Patient's Name claims 0xFFF0 bytes; the data set is cut right after its header
    offset = _element_offset(data, (0x0010, 0x0010), b"PN")
    return data[: offset + 6] + struct.pack("<H", 0xFFF0) + data[offset + 8 : offset + 200]


def _undefined_length_on_a_text_element(data: bytes) -> bytes:
    offset = _element_offset(data, (0x0008, 0x103E), b"LO")
    (length,) = struct.unpack_from("<H", data, offset + 6)
    # rewrite (0008,103E) as a UT element (4-byte length) of undefined length
    return (
        data[:offset]
        + struct.pack("<HH", 0x0008, 0x103E)
        + b"UT\0\0"
        + b"\xff\xff\xff\xff"
        + data[offset + 8 :]
    )


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (_truncated_in_pixel_data, "value of element (7FE0,0010)"),
        (_truncated_in_header, "truncated or inconsistent length"),
        (_pixel_length_beyond_data, "value of element (7FE0,0010)"),
        (_short_element_length_beyond_data, "value of element (0010,0010)"),
        (_undefined_length_on_a_text_element, "has an undefined length"),
        (lambda data: b"\x00\x01\x02garbage" * 40, "truncated or inconsistent length"),
    ],
    ids=[
        "truncated_in_pixel_data",
        "truncated_in_header",
        "pixel_data_length_beyond_data",
        "element_length_beyond_data",
        "undefined_length_text",
        "garbage",
    ],
)
def test_corrupt_data_set_cannot_understand(
    node: NodeService,
    assoc: Association,
    source: tuple[bytes, str],
    mutate: Callable[[bytes], bytes],
    fragment: str,
) -> None:
    data, sop_instance = source
    assert raw_store(assoc, mutate(data), sop_instance) == status.CANNOT_UNDERSTAND
    assert_refused_cleanly(node, assoc, status.CANNOT_UNDERSTAND, fragment)
    # the same instance, intact, is stored on the same association afterwards
    assert raw_store(assoc, data, sop_instance) == status.SUCCESS
    assert len(stored_files(node)) == 1


def test_explicit_vr_data_set_on_an_implicit_vr_context(
    node: NodeService, assoc: Association, source: tuple[bytes, str]
) -> None:
    """The SCU lies about the encoding: the lengths read as Implicit VR do not fit."""
    data, sop_instance = source
    status_ = raw_store(assoc, data, sop_instance, syntax=ImplicitVRLittleEndian)
    assert status_ == status.CANNOT_UNDERSTAND
    assert_refused_cleanly(node, assoc, status.CANNOT_UNDERSTAND, "truncated or inconsistent length")


def test_request_and_data_set_disagree_on_the_sop_instance(
    node: NodeService, assoc: Association, source: tuple[bytes, str]
) -> None:
    data, _ = source
    assert raw_store(assoc, data, generate_uid()) == status.CANNOT_UNDERSTAND
    assert_refused_cleanly(node, assoc, status.CANNOT_UNDERSTAND, "differs from the request's")


@pytest.mark.parametrize(
    ("keyword", "value", "fragment"),
    [
        ("SOPInstanceUID", "../../../etc/passwd", "not a DICOM UID"),
        ("SOPInstanceUID", "1.2.3/../../4", "not a DICOM UID"),
        ("SOPInstanceUID", "1.2.3\\4", "SOP Instance UID is missing or not text"),  # two values
        ("SOPInstanceUID", "..", "not a DICOM UID"),
        ("SOPInstanceUID", "1..2", "not a DICOM UID"),
        ("SOPInstanceUID", ".1.2", "not a DICOM UID"),
        ("SOPInstanceUID", "1.2.3\x00/../4", "not a DICOM UID"),
        ("SOPInstanceUID", "1.2 3", "not a DICOM UID"),
        ("SOPInstanceUID", "1.2." + "9" * 62, "longer than 64"),
        ("SOPInstanceUID", "", "SOP Instance UID is"),
        ("SeriesInstanceUID", "..", "Series Instance UID"),
        ("SeriesInstanceUID", "/tmp", "Series Instance UID"),
        ("StudyInstanceUID", "1.2.3/4", "Study Instance UID"),
        ("StudyInstanceUID", "~", "Study Instance UID"),
    ],
)
def test_uids_crafted_to_escape_the_spool(
    node: NodeService, assoc: Association, tmp_path: Path, keyword: str, value: str, fragment: str
) -> None:
    before = sorted(tmp_path.rglob("*"))
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    setattr(ds, keyword, value)
    usable = keyword == "SOPInstanceUID" and 0 < len(value) <= 64 and "\\" not in value
    request_uid = value if usable else generate_uid()
    payload = encode(ds, False, True)
    assert payload is not None
    assert raw_store(assoc, payload, request_uid) == status.CANNOT_UNDERSTAND
    assert_refused_cleanly(node, assoc, status.CANNOT_UNDERSTAND, fragment)
    after = sorted(tmp_path.rglob("*"))
    assert [p for p in after if p not in before and not p.name.startswith("audit.db")] == []
    assert not list(tmp_path.parent.glob("passwd*")) and not (node.spool.root.parent / "4.dcm").exists()


def test_data_set_without_pixel_data_is_stored_and_the_series_is_not_segmentable(
    node: NodeService, assoc: Association
) -> None:
    """Tolerant when reading: the SCP does not judge the IOD, it stores what parses. Conversion then gives
    the series its reason (no_pixel_data), which the job records."""
    files = series_files(T2_SAG)[:3]
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    stored = stored_files(node)
    assert len(stored) == 3
    with pytest.raises(NotSegmentableError) as info:
        load_series(stored)
    assert info.value.reason == Reason.NO_PIXEL_DATA
    assert "carries pixel data" in info.value.message


NON_IMAGE = [BasicTextSRStorage, ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage]


def test_non_image_sop_classes_refused_at_negotiation(node: NodeService) -> None:
    assoc = associate(
        node,
        [(MRImageStorage, [ExplicitVRLittleEndian])]
        + [(uid, [ExplicitVRLittleEndian]) for uid in [*NON_IMAGE, KeyObjectSelectionDocumentStorage]],
    )
    refused = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
    assert refused == {uid: 0x03 for uid in [*NON_IMAGE, KeyObjectSelectionDocumentStorage]}
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    with pytest.raises(ValueError, match="No presentation context"):
        assoc.send_c_store(sr)
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    assoc.release()
    with node.db.read() as session:
        query = select(Event).where(Event.what == "presentation_context_refused")
        details = [e.detail or "" for e in session.scalars(query)]
    assert len(details) == 4 and all(d.startswith("abstract_syntax_not_supported") for d in details)
    assert any(KeyObjectSelectionDocumentStorage in d for d in details)


def test_association_offering_only_non_image_classes_stays_harmless(node: NodeService) -> None:
    assoc = associate(node, [(BasicTextSRStorage, [ExplicitVRLittleEndian])])
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    assoc.release()
    assert stored_files(node) == []


def test_non_image_sop_class_accepted_by_configuration_is_not_segmentable(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config(**{"accept.sop_classes": ["MRImageStorage", "ComprehensiveSRStorage"]}))
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    assoc = associate(node, [(sr.SOPClassUID, [sr.file_meta.TransferSyntaxUID])])
    assert int(assoc.send_c_store(sr).Status) == status.SUCCESS
    assoc.release()
    [stored] = stored_files(node)
    with pytest.raises(NotSegmentableError) as info:
        load_series([stored])
    assert info.value.reason == Reason.NO_PIXEL_DATA


# -- series coherence --------------------------------------------------------------------------------------


def test_one_series_uid_in_two_studies_is_refused(node: NodeService, assoc: Association) -> None:
    files = series_files(T2_SAG)[:3]
    assert [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in files[:2]] == [status.SUCCESS] * 2
    intruder = pydicom.dcmread(files[2])
    original_study = intruder.StudyInstanceUID
    intruder.StudyInstanceUID = generate_uid()
    assert int(assoc.send_c_store(intruder).Status) == status.CANNOT_UNDERSTAND
    [event] = audit.events(node.db, "instance_refused")
    assert (event.reason or "").startswith("mixed_series: ")
    assert original_study in (event.reason or "") and intruder.StudyInstanceUID in (event.reason or "")
    assert len(stored_files(node)) == 2 and instance_count(node) == 2
    assert not (node.spool.root / intruder.StudyInstanceUID).exists()
    with node.db.read() as session:
        [series] = session.scalars(select(Series))
    assert series.study_instance_uid == original_study and series.instance_count == 2
    assert int(assoc.send_c_echo().Status) == status.SUCCESS


def test_one_series_uid_for_two_patients_is_refused(node: NodeService, assoc: Association) -> None:
    files = series_files(T2_SAG)[:2]
    assert int(assoc.send_c_store(pydicom.dcmread(files[0])).Status) == status.SUCCESS
    other = pydicom.dcmread(files[1])
    other.PatientID = "OTHER-PATIENT-7"
    assert int(assoc.send_c_store(other).Status) == status.CANNOT_UNDERSTAND
    [event] = audit.events(node.db, "instance_refused")
    assert (event.reason or "").startswith("mixed_series: ") and "different Patient ID" in (
        event.reason or ""
    )
    assert "OTHER-PATIENT-7" not in (event.reason or "")
    assert len(stored_files(node)) == 1


def test_patient_ids_are_compared_in_their_hashed_form(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config(**{"privacy.patient_id": "hashed", "privacy.patient_id_salt": "s3cret"}))
    assoc = associate(node)
    files = series_files(T2_SAG)[:3]
    statuses = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in files[:2]]
    other = pydicom.dcmread(files[2])
    other.PatientID = "OTHER-PATIENT-7"
    statuses.append(int(assoc.send_c_store(other).Status))
    assoc.release()
    assert statuses == [status.SUCCESS, status.SUCCESS, status.CANNOT_UNDERSTAND]


def test_sop_instance_moved_to_another_series_is_refused(node: NodeService, assoc: Association) -> None:
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    first_series = ds.SeriesInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    assert int(assoc.send_c_store(ds).Status) == status.CANNOT_UNDERSTAND
    [event] = audit.events(node.db, "instance_refused")
    assert (event.reason or "").startswith("sop_instance_in_other_series: ") and first_series in (
        event.reason or ""
    )
    assert len(stored_files(node)) == 1


def test_series_beyond_the_configured_size_gets_out_of_resources(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(make_config(**{"storage.max_series_instances": 3}))
    files = clone_series(series_files(T2_SAG)[0], 5, tmp_path / "clone")
    assoc = associate(node)
    statuses = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in files]
    assert statuses == [status.SUCCESS] * 3 + [status.OUT_OF_RESOURCES] * 2
    # an instance already in the series may be sent again; another series is not affected
    assert int(assoc.send_c_store(pydicom.dcmread(files[0])).Status) == status.SUCCESS
    assert int(assoc.send_c_store(pydicom.dcmread(series_files(T2_SAG)[0])).Status) == status.SUCCESS
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    assoc.release()
    events = audit.events(node.db, "instance_refused")
    assert len(events) == 2
    assert all((e.reason or "").startswith("series_too_large: ") for e in events)
    assert "storage.max_series_instances (3)" in (events[0].reason or "")
    assert all(e.detail == status.describe(status.OUT_OF_RESOURCES) for e in events)
    assert len(stored_files(node)) == 4


@pytest.mark.parametrize("value", ["\u0661.\u0662.\u0663", "1.2.\uff13", "1.2.3\n", "1.2.3\t4"])
def test_non_ascii_digits_and_control_characters_are_not_uids(value: str) -> None:
    """Digits of other scripts match ``\\d`` in Python regular expressions; a UID takes ASCII digits only."""
    with pytest.raises(InvalidUIDError):
        path_safe_uid(value, "SOP Instance UID")


def test_two_associations_starting_one_series_with_two_studies_at_once(node: NodeService) -> None:
    """The first instances of one Series Instance UID arrive at the same moment over two associations,
    naming two studies: exactly one is stored, the other is refused as mixed_series (the check covers the
    instances still on their way into the database, not only those recorded)."""
    source = series_files(T2_SAG)[0]
    first, second = associate(node), associate(node)
    rounds = 8
    for _ in range(rounds):
        series_uid = generate_uid()
        datasets = []
        for patient in ("PATIENT-A", "PATIENT-B"):
            ds = pydicom.dcmread(source)
            ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, generate_uid()
            ds.SOPInstanceUID, ds.PatientID = generate_uid(), patient
            datasets.append(ds)
        barrier = threading.Barrier(2)
        statuses: dict[int, int] = {}
        threads = [
            threading.Thread(target=_send_together, args=(barrier, statuses, n, assoc, ds))
            for n, (assoc, ds) in enumerate(zip((first, second), datasets, strict=True))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(statuses.values()) == sorted([status.SUCCESS, status.CANNOT_UNDERSTAND]), statuses
        winner = datasets[0] if statuses[0] == status.SUCCESS else datasets[1]
        with node.db.read() as session:
            series = session.get(Series, series_uid)
            instances = list(
                session.scalars(select(Instance).where(Instance.series_instance_uid == series_uid))
            )
        assert series is not None and series.study_instance_uid == winner.StudyInstanceUID
        assert [i.sop_instance_uid for i in instances] == [winner.SOPInstanceUID]
    first.release()
    second.release()
    assert len(audit.events(node.db, "instance_refused")) == rounds
    assert all(
        (e.reason or "").startswith("mixed_series: ") for e in audit.events(node.db, "instance_refused")
    )
    assert len(stored_files(node)) == rounds


def _send_together(
    barrier: threading.Barrier, statuses: dict[int, int], n: int, assoc: Association, ds: pydicom.Dataset
) -> None:
    barrier.wait()
    statuses[n] = int(assoc.send_c_store(ds).Status)
