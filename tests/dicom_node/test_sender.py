"""C-STORE SCU against real peers on 127.0.0.1: a pynetdicom SCP on port 0 and DCMTK's storescp process.

Covers success, warning status, failure statuses (retryable and not), association rejected, aborted, no
accepted presentation context, no response, peer down; and the pure retry policy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import SegmentationStorage

from config.routing import DestinationConfig, RetryConfig, SendingConfig
from dicom_node.outputs.seg import AlgorithmInfo, Compression, SegmentationType, SegOptions, encode_seg
from dicom_node.outputs.sender import (
    SendError,
    SendOutcome,
    decide_retry,
    failure_is_retryable,
    next_attempt_at,
    retry_delay_s,
    retry_policy,
    send_datasets,
)
from tests.dicom_node.seg_support import TEST_SEGMENTS, synthetic_label_map, volumes_of
from tests.support.dcmtk import StoreSCP, storescp
from tests.support.ports import free_port

SAG = "prostatex/ProstateX-0000_3.000000-t2tsesag-87368"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
FAST = SendingConfig(connect_timeout_s=2, acse_timeout_s=5, dimse_timeout_s=5, network_timeout_s=5)


def _seg(test_mri: Path, seg_type: SegmentationType = SegmentationType.BINARY, **kw: Any) -> Dataset:
    volume = volumes_of(test_mri / SAG)[0]
    label_map = synthetic_label_map(volume.shape, [1, 2, 3])
    options = SegOptions(segmentation_type=seg_type, **kw)
    return encode_seg(
        volume, label_map, TEST_SEGMENTS, AlgorithmInfo("TotalSegmentator", "total_mr", "2.18.0"), options
    ).dataset


@pytest.fixture(scope="module")
def seg_binary(test_mri: Path) -> Dataset:
    return _seg(test_mri)


def _destination(port: int, ae_title: str = "STORE_SCP") -> DestinationConfig:
    return DestinationConfig(ae_title=ae_title, host="127.0.0.1", port=port)


class PynetdicomPeer:
    """A real pynetdicom Storage SCP on an ephemeral port whose C-STORE handler is set per test."""

    def __init__(self, handler: Callable[[evt.Event], Any], sop_classes: list[str], **ae_kw: Any) -> None:
        self.received: list[Dataset] = []
        self.ae = AE(ae_title="STORE_SCP")
        for key, value in ae_kw.items():
            setattr(self.ae, key, value)
        for sop_class in sop_classes:
            self.ae.add_supported_context(
                sop_class,
                ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"],
            )
        self.handler = handler
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        self.port = int(self.server.server_address[1])

    def _store(self, event: evt.Event) -> Any:
        self.received.append(event.dataset)
        return self.handler(event)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def peer_factory() -> Iterator[Callable[..., PynetdicomPeer]]:
    peers: list[PynetdicomPeer] = []

    def make(
        handler: Callable[[evt.Event], Any], sop_classes: list[str] | None = None, **kw: Any
    ) -> PynetdicomPeer:
        peer = PynetdicomPeer(handler, sop_classes or [SegmentationStorage], **kw)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.stop()


def test_success(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    peer = peer_factory(lambda event: 0x0000)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), FAST)
    assert result.outcome is SendOutcome.SUCCESS and result.delivered and not result.retryable
    assert [i.status for i in result.instances] == [0x0000]
    assert len(peer.received) == 1
    assert peer.received[0].SOPInstanceUID == seg_binary.SOPInstanceUID
    result.raise_for_failure()


def test_warning_status_is_recorded(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    peer = peer_factory(lambda event: 0xB000)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), FAST)
    assert result.outcome is SendOutcome.WARNING and result.delivered
    assert result.warnings[0].status == 0xB000
    assert "0xB000 Warning: Coercion of Data Elements" in result.detail


@pytest.mark.parametrize(
    ("status", "retryable", "text"),
    [
        (0xA700, True, "0xA700 Failure: Refused: Out of resources"),
        (0x0110, True, "0x0110"),
        (0xA900, False, "0xA900 Failure: Data set does not match SOP class"),
        (0xC000, False, "0xC000 Failure: Cannot understand"),
    ],
)
def test_failure_status(
    peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset, status: int, retryable: bool, text: str
) -> None:
    def handler(event: evt.Event) -> Dataset:
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = "disk full" if status == 0xA700 else "refused by test peer"
        return rsp

    peer = peer_factory(handler)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), FAST)
    assert result.outcome is SendOutcome.FAILURE_STATUS and not result.delivered
    assert result.retryable is retryable
    assert result.instances[0].status == status
    assert text.lower() in result.detail.lower()
    assert ("disk full" if status == 0xA700 else "refused by test peer") in result.detail
    with pytest.raises(SendError, match=f"C-STORE to pacs: .*0x{status:04X}") as err:
        result.raise_for_failure()
    assert err.value.reason == "failure_status"


def test_association_rejected(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    peer = peer_factory(lambda event: 0x0000, require_called_aet=True)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port, ae_title="WRONG_AE"), FAST)
    assert result.outcome is SendOutcome.ASSOCIATION_REJECTED
    assert not result.retryable  # permanent rejection: called AE title not recognised
    assert "rejected (permanent)" in result.detail and "Called AE title not recognised" in result.detail
    assert peer.received == []


def test_association_aborted(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    def abort(event: evt.Event) -> int:
        event.assoc.abort()
        return 0x0000

    peer = peer_factory(abort)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), FAST)
    assert result.outcome is SendOutcome.ASSOCIATION_ABORTED and result.retryable
    assert "aborted during C-STORE" in result.detail


def test_no_response(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    release = threading.Event()

    def hang(event: evt.Event) -> int:
        release.wait(10)
        return 0x0000

    peer = peer_factory(hang)
    sending = SendingConfig(connect_timeout_s=2, acse_timeout_s=2, dimse_timeout_s=1, network_timeout_s=5)
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), sending)
    release.set()
    assert result.outcome is SendOutcome.NO_RESPONSE and result.retryable
    assert "no C-STORE response" in result.detail


def test_no_accepted_context(peer_factory: Callable[..., PynetdicomPeer], seg_binary: Dataset) -> None:
    peer = peer_factory(lambda event: 0x0000, sop_classes=["1.2.840.10008.5.1.4.1.1.4"])  # MR only
    result = send_datasets([seg_binary], "pacs", _destination(peer.port), FAST)
    assert result.outcome is SendOutcome.NO_ACCEPTED_CONTEXT and not result.retryable
    assert "accepted no presentation context for 1.2.840.10008.5.1.4.1.1.66.4" in result.detail


def test_peer_down(seg_binary: Dataset) -> None:
    port = free_port()  # nothing listens there
    result = send_datasets([seg_binary], "pacs", _destination(port), FAST)
    assert result.outcome is SendOutcome.PEER_UNREACHABLE and result.retryable
    assert f"127.0.0.1:{port}" in result.detail


def test_unknown_host(seg_binary: Dataset) -> None:
    destination = DestinationConfig(ae_title="PACS", host="no-such-host.invalid", port=104)
    result = send_datasets([seg_binary], "pacs", destination, FAST)
    assert result.outcome is SendOutcome.PEER_UNREACHABLE and result.retryable


# ------------------------------------------------------------------------------------------ DCMTK


@pytest.fixture
def dcmtk_peer(tmp_path: Path) -> Iterator[Callable[..., tuple[int, Path]]]:
    """``start(*options)``: a DCMTK storescp (AE title DCMTK_SCP) that has answered an association request;
    returns its port and the folder it writes to."""
    with contextlib.ExitStack() as peers:

        def start(*options: str) -> tuple[int, Path]:
            folder = tmp_path / f"received{len(started)}"
            timeouts = ("-ta", "5", "-td", "5")
            scp = peers.enter_context(storescp(folder, *timeouts, *options, ae_title="DCMTK_SCP"))
            started.append(scp)
            return scp.port, scp.folder

        started: list[StoreSCP] = []
        yield start


def test_dcmtk_storescp_receives_the_seg(dcmtk_peer: Callable[..., tuple[int, Path]], test_mri: Path) -> None:
    port, out = dcmtk_peer("+xa")  # accept all transfer syntaxes it supports (JPEG 2000 included)
    seg = _seg(test_mri, compression=Compression.JPEG2000)
    result = send_datasets([seg], "dcmtk", _destination(port, "DCMTK_SCP"), FAST)
    assert result.outcome is SendOutcome.SUCCESS, result.detail
    (stored,) = list(out.iterdir())
    ds = pydicom.dcmread(stored)
    assert ds.SOPInstanceUID == seg.SOPInstanceUID and ds.SOPClassUID == SegmentationStorage
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"


def test_dcmtk_without_label_map_seg_support(
    dcmtk_peer: Callable[..., tuple[int, Path]], test_mri: Path
) -> None:
    """DCMTK 3.6.7 predates the Label Map Segmentation SOP Class: it accepts no context for it."""
    port, out = dcmtk_peer()
    seg = _seg(test_mri, SegmentationType.LABELMAP)
    assert seg.SOPClassUID == LABEL_MAP_SEGMENTATION_STORAGE
    result = send_datasets([seg], "dcmtk", _destination(port, "DCMTK_SCP"), FAST)
    assert result.outcome is SendOutcome.NO_ACCEPTED_CONTEXT and not result.retryable
    assert list(out.iterdir()) == []
    port, out = dcmtk_peer("-pm", "+xa")  # promiscuous mode accepts unknown SOP classes
    rle = _seg(test_mri, SegmentationType.LABELMAP, compression=Compression.RLE)
    result = send_datasets([seg, rle], "dcmtk", _destination(port, "DCMTK_SCP"), FAST)
    assert result.outcome is SendOutcome.SUCCESS, result.detail
    assert len(list(out.iterdir())) == 2  # compression is part of the UID derivation: two instances


def test_dcmtk_refuses_association(dcmtk_peer: Callable[..., tuple[int, Path]], seg_binary: Dataset) -> None:
    port, _ = dcmtk_peer("--refuse")  # awaited until it rejected an association request
    result = send_datasets([seg_binary], "dcmtk", _destination(port, "DCMTK_SCP"), FAST)
    assert result.outcome is SendOutcome.ASSOCIATION_REJECTED
    assert "association rejected" in result.detail


@pytest.fixture
def rejecting_peer() -> Iterator[int]:
    """A peer that answers every connection with an A-ASSOCIATE-RJ (permanent, service-user, no reason
    given) at once and closes it after reading the request: the fastest rejection a PACS can give."""
    answer = A_ASSOCIATE_RJ()
    answer.result, answer.source, answer.reason_diagnostic = 0x01, 0x01, 0x01
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.sendall(answer.encode())
                connection.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (closing alone does not)
    server.close()
    thread.join(30)


def test_a_rejection_is_reported_however_fast_the_peer_closes(
    rejecting_peer: int, seg_binary: Dataset
) -> None:
    """pynetdicom's requestor can see the connection closed before it reads the A-ASSOCIATE-RJ that came
    with it (then it reports an abort without an answer); the sender reports the rejection all the same,
    never ``peer_unreachable``. The race is won by the peer in a few percent of tries: 50 tries."""
    outcomes = [send_datasets([seg_binary], "pacs", _destination(rejecting_peer), FAST) for _ in range(50)]
    assert {r.outcome for r in outcomes} == {SendOutcome.ASSOCIATION_REJECTED}, {r.detail for r in outcomes}
    assert not any(r.retryable for r in outcomes)
    assert "association rejected (permanent) by " in outcomes[0].detail


# ------------------------------------------------------------------------------------------ retry policy

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def test_retry_delays_grow_exponentially_and_cap() -> None:
    policy = RetryConfig(initial_delay_s=30, factor=2, max_delay_s=600)
    assert [retry_delay_s(policy, n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert retry_delay_s(policy, 10_000) == 600  # no overflow on huge attempt counts
    assert retry_delay_s(RetryConfig(initial_delay_s=5, factor=1), 50) == 5
    with pytest.raises(ValueError, match="starts at 1"):
        retry_delay_s(policy, 0)


def test_next_attempt_from_attempts_and_clock() -> None:
    policy = RetryConfig(initial_delay_s=60, factor=3, max_delay_s=3600, max_total_s=2 * 3600)
    now = T0 + timedelta(minutes=5)
    assert next_attempt_at(policy, 1, T0, now) == now + timedelta(seconds=60)
    assert next_attempt_at(policy, 3, T0, now) == now + timedelta(seconds=540)
    # Total time: the next attempt would start more than 2 h after the first one.
    late = T0 + timedelta(hours=1, minutes=50)
    assert next_attempt_at(policy, 5, T0, late) is None
    assert next_attempt_at(policy, 1, T0, late) == late + timedelta(seconds=60)


def test_max_attempts() -> None:
    policy = RetryConfig(initial_delay_s=1, max_attempts=3)
    assert next_attempt_at(policy, 2, T0, T0) is not None
    assert next_attempt_at(policy, 3, T0, T0) is None


def test_default_policy_retries_for_hours() -> None:
    policy = RetryConfig()
    attempts, now = 1, T0
    while (at := next_attempt_at(policy, attempts, T0, now)) is not None:
        attempts, now = attempts + 1, at
    assert timedelta(hours=23) <= now - T0 <= timedelta(hours=24)
    assert attempts > 40


def test_decide_retry_and_per_destination_policy(seg_binary: Dataset) -> None:
    from dicom_node.outputs.sender import SendResult

    policy = RetryConfig(initial_delay_s=10)
    down = SendResult("pacs", SendOutcome.PEER_UNREACHABLE, True, "down")
    assert decide_retry(down, policy, 1, T0, T0) == T0 + timedelta(seconds=10)
    bad = SendResult("pacs", SendOutcome.FAILURE_STATUS, False, "0xA900")
    assert decide_retry(bad, policy, 1, T0, T0) is None
    ok = SendResult("pacs", SendOutcome.SUCCESS, False, "stored")
    assert decide_retry(ok, policy, 1, T0, T0) is None
    own = RetryConfig(initial_delay_s=1, max_total_s=60)
    sending = SendingConfig()
    assert retry_policy(DestinationConfig(ae_title="A", host="h", port=1, retry=own), sending) is own
    assert retry_policy(DestinationConfig(ae_title="A", host="h", port=1), sending) is sending.retry
    assert (
        failure_is_retryable(0xA7FF) and not failure_is_retryable(0x0122) and not failure_is_retryable(0xCFFF)
    )
