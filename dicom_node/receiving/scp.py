"""The C-ECHO / C-STORE SCP: association checks, presentation contexts and the durable store handler.

Handlers are small functions bound in one table with their dependencies (:func:`handler_table`). The
association checks run in ``EVT_REQUESTED``, before pynetdicom negotiates: an association to an unknown
called AE title, from a calling AE title not allowed for that called AE title, or from the wrong address is
answered with an A-ASSOCIATE-RJ (rejected-permanent, service-user, called/calling AE title not recognised).
Presentation contexts are accepted or refused per context by pynetdicom from the configured SOP classes and
transfer syntaxes; refused contexts are recorded in the audit log.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any, cast

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError

from config.model import SegNodeConfig
from dicom_node.audit.log import AuditLog, InstanceHeader
from dicom_node.http.metrics import NodeMetrics
from dicom_node.logs import association_id_var
from dicom_node.receiving import statuses as status
from dicom_node.receiving.admission import (
    MalformedDatasetError,
    SeriesRefusal,
    check_encoding,
    check_series,
    series_conflict,
)
from dicom_node.receiving.associations import AccessPolicy, AssociationTable, Rejection
from dicom_node.receiving.completion import CompletionTracker
from dicom_node.receiving.header import read_header
from dicom_node.receiving.recorder import InstanceRecorder
from dicom_node.receiving.server import wake_acceptor
from dicom_node.receiving.spool import Spool, SpoolFullError, SpoolWriteError
from dicom_node.receiving.wire import part10_file
from dicom_node.uids import InvalidUIDError

LOG = logging.getLogger(__name__)

#: pynetdicom's own association limit, set out of reach (see :func:`build_ae`).
UNLIMITED_CONNECTIONS = 1 << 20

_CONTEXT_RESULTS = {
    0x01: "user_rejection",
    0x02: "no_reason",
    0x03: "abstract_syntax_not_supported",
    0x04: "transfer_syntaxes_not_supported",
}


class Receiver:
    """State shared by the handlers: the spool, the audit log, the completion tracker, the policy."""

    def __init__(
        self,
        config: SegNodeConfig,
        spool: Spool,
        audit: AuditLog,
        tracker: CompletionTracker,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.config = config
        #: Counters of received/refused instances and associations (``/metrics``).
        self.metrics = metrics or NodeMetrics()
        self.spool = spool
        self.audit = audit
        self.tracker = tracker
        #: Commits the records of instances stored at the same moment together (group commit).
        self.recorder = InstanceRecorder(audit)
        self.policy = AccessPolicy(config.node)
        #: Audit ids and ``network.max_associations`` slots of the associations.
        self.associations = AssociationTable(config.network.max_associations)
        #: Series whose instances are admitted but not yet recorded in the database (see :meth:`admit`).
        self._in_flight: dict[str, _InFlight] = {}
        self._admit_lock = threading.Lock()

    def admit(self, header: InstanceHeader) -> SeriesRefusal | None:
        """Whether an instance may join its series (``None``) or is refused: the database's series, and
        the instances of that series other associations are storing right now (not in the database yet),
        so that two associations starting one series with different studies cannot both be accepted.
        Each admitted instance must be passed to :meth:`settle` once recorded or refused."""
        with self._admit_lock:
            refusal = check_series(
                self.audit.db, header, self.config.storage.max_series_instances, self.audit._patient_id
            )
            if refusal is not None:
                return refusal
            patient = self.audit._patient_id(header.patient_id)
            pending = self._in_flight.get(header.series_instance_uid)
            if pending is None:
                self._in_flight[header.series_instance_uid] = _InFlight(header.study_instance_uid, patient)
                return None
            conflict = series_conflict(header, patient, pending.study_instance_uid, pending.patient)
            if conflict is None:
                pending.count += 1
                if pending.patient is None:
                    pending.patient = patient
            return conflict

    def settle(self, header: InstanceHeader) -> None:
        """An admitted instance is recorded in the database (or was refused after all)."""
        with self._admit_lock:
            pending = self._in_flight.get(header.series_instance_uid)
            if pending is not None:
                pending.count -= 1
                if pending.count <= 0:
                    del self._in_flight[header.series_instance_uid]

    def association_id(self, assoc: Association) -> int | None:
        return self.associations.association_id(assoc)

    def end_dead_associations(self) -> list[int]:
        """End, as aborted, the associations whose thread has ended without a release, abort or connection
        close event (pynetdicom's association thread can die on a malformed PDU without any). Run
        periodically; returns the audit ids of the associations it ended."""
        ended = self.associations.pop_dead()
        for association_id in ended:
            LOG.warning(
                "association %d ended without release or abort (its connection was dropped)", association_id
            )
            self.tracker.association_ended(association_id, released=False)
            self.ended(association_id, "aborted")
        return ended

    def ended(self, association_id: int, result: str) -> None:
        """Record the end of an association (released or aborted), once."""
        if self.audit.association_ended(association_id, result):
            self.metrics.association(result)

    def connection_silent(self, address: str, port: int) -> None:
        """A connection sent nothing within ``network.acse_timeout_s`` and was closed."""
        self.audit.event(
            "connection_closed",
            "failure",
            "no_association_request",
            detail=f"connection from {address}:{port} sent nothing within network.acse_timeout_s "
            f"({self.config.network.acse_timeout_s:g} s); closed",
        )


@dataclass
class _InFlight:
    """A series with admitted instances not yet in the database: what they name, and how many they are."""

    study_instance_uid: str
    patient: str | None
    count: int = 1


# -- handlers ---------------------------------------------------------------------------------------------


def handle_conn_open(event: evt.Event) -> None:
    """Set TCP_NODELAY on the accepted socket: without it, small PDUs wait on delayed ACKs (~40 ms).

    Also give it a timeout: pynetdicom reads a whole PDU with blocking ``recv`` calls, so a peer that
    announces a PDU (or a 4 GiB length in garbage) and then stays silent would hold its threads for ever.
    Until the association is accepted the timeout is ``network.acse_timeout_s`` (the time PS3.8 gives the
    request), then ``network.network_timeout_s`` (:func:`handle_accepted`).
    """
    requestor = event.assoc.requestor
    LOG.debug("connection from %s:%s handed to the association layer", requestor.address, requestor.port)
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        try:
            sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.socket.settimeout(event.assoc.acse_timeout)
        except OSError as exc:  # the peer is already gone; the DUL sees the closed connection
            LOG.info("connection from %s closed as it opened: %s", requestor.address, exc)


def handle_requested(event: evt.Event, receiver: Receiver) -> None:
    """Record the association request and reject it (A-ASSOCIATE-RJ) if the policy says so, the spool is
    below its free-space watermark, or ``network.max_associations`` associations are open."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    if request is None:
        return
    calling = str(request.calling_ae_title).strip()
    called = str(request.called_ae_title).strip()
    address = str(assoc.requestor.address)
    association_id = receiver.audit.association_requested(calling, called, address, assoc.requestor.port)
    receiver.associations.requested(assoc, association_id)
    association_id_var.set(str(association_id))
    rejection = receiver.policy.check(calling, called, address)
    if rejection is None and receiver.spool.below_watermark():
        rejection = Rejection(
            status.REJECTED_TRANSIENT,
            status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
            status.REASON_TEMPORARY_CONGESTION,
            "out_of_resources",
            "spool free space below the watermark",
        )
    if rejection is None and not receiver.associations.take_slot(assoc):
        rejection = Rejection(
            status.REJECTED_TRANSIENT,
            status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
            status.REASON_LOCAL_LIMIT_EXCEEDED,
            "local_limit_exceeded",
            f"{receiver.associations.limit} associations are open (network.max_associations)",
        )
    if rejection is not None:
        LOG.warning("rejecting association %s -> %s from %s: %s", calling, called, address, rejection.detail)
        # Recorded before the A-ASSOCIATE-RJ goes out: the peer closes the connection as soon as it has it,
        # and the close (handled on the DUL's thread) must find the association already ended as rejected,
        # not end it as aborted first.
        receiver.metrics.association("rejected")
        receiver.audit.association_rejected(
            association_id,
            rejection.code,
            f"{rejection.detail} (result 0x{rejection.result:02X}, source 0x{rejection.source:02X}, "
            f"reason 0x{rejection.reason:02X})",
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.reason)
        # As pynetdicom does after its own rejections: wait until the DUL has sent the A-ASSOCIATE-RJ and
        # the connection is closed (the peer closes it, or ARTIM ends it); otherwise the association
        # thread closes the socket first and the peer sees an abort instead of the rejection.
        assoc.kill()
        return
    # Answer with the called AE title the peer used (several AE titles share the port).
    assoc.acceptor.ae_title = called


def handle_accepted(event: evt.Event, receiver: Receiver) -> None:
    """Record the accepted association and every presentation context refused in it; from now on the
    connection's socket timeout is ``network.network_timeout_s``."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.settimeout(event.assoc.network_timeout)
    association_id = receiver.association_id(event.assoc)
    if association_id is None:
        return
    refused = [
        f"{_CONTEXT_RESULTS.get(cx.result or 0, str(cx.result))}: abstract syntax {cx.abstract_syntax} "
        f"({UID(str(cx.abstract_syntax)).name}), transfer syntaxes {', '.join(cx.transfer_syntax)}"
        for cx in event.assoc.rejected_contexts
    ]
    receiver.audit.association_accepted(association_id, refused)
    receiver.metrics.association("accepted")
    LOG.info("association accepted (%d presentation context(s) refused)", len(refused))


def handle_rejected(event: evt.Event, receiver: Receiver) -> None:
    """pynetdicom rejected the association itself (e.g. an unsupported protocol version): record it."""
    receiver.associations.release_slot(event.assoc)
    association_id = receiver.association_id(event.assoc)
    if association_id is not None:
        primitive = event.assoc.acceptor.primitive
        receiver.metrics.association("rejected")
        receiver.audit.association_rejected(
            association_id,
            "local_limit_exceeded" if primitive is not None and primitive.diagnostic == 0x02 else "rejected",
            f"rejected by the association layer (result {getattr(primitive, 'result', None)}, "
            f"source {getattr(primitive, 'result_source', None)}, "
            f"reason {getattr(primitive, 'diagnostic', None)})",
        )


def handle_released(event: evt.Event, receiver: Receiver) -> None:
    _ended(event, receiver, released=True)


def handle_aborted(event: evt.Event, receiver: Receiver) -> None:
    _ended(event, receiver, released=False)


def handle_acse_sent(event: evt.Event, receiver: Receiver) -> None:
    """The node hands an A-RELEASE response to the DUL: the association is released.

    pynetdicom's association thread queues the A-RELEASE-RP and only then triggers ``EVT_RELEASED``; the
    DUL thread meanwhile sends it, the peer closes the connection, and ``EVT_CONN_CLOSE`` can come first.
    Marking the release here, before the response can reach the peer, lets :func:`handle_conn_close`
    record it as released however the two threads interleave.
    """
    primitive = getattr(event, "primitive", None)  # set from the event data; not declared on Event
    if isinstance(primitive, A_RELEASE) and primitive.result == "affirmative":
        receiver.associations.release_answered(event.assoc)


def handle_conn_close(event: evt.Event, receiver: Receiver) -> None:
    """The connection closed: an accepted association not released or aborted by now counts as released
    if its release was answered (:func:`handle_acse_sent`), else as aborted; a connection without a
    request ends its thread at once (see :func:`wake_acceptor`)."""
    association_id, released = receiver.associations.forget(event.assoc)
    if association_id is None:
        wake_acceptor(event.assoc)
        # no A-ASSOCIATE-RQ was decoded: garbage or a malformed PDU, a failed TLS handshake
        requestor = event.assoc.requestor
        receiver.audit.event(
            "connection_closed",
            "failure",
            "no_association_request",
            detail=f"connection from {requestor.address}:{requestor.port} closed before a valid "
            "A-ASSOCIATE-RQ (malformed PDU, failed TLS handshake, or no request)",
        )
        return
    if not event.assoc.is_rejected:
        # Often EVT_RELEASED or EVT_ABORTED has already ended it (both calls are then no-ops); a release
        # whose EVT_RELEASED is still to come ends here as released. Where pynetdicom's state machine gave
        # up on a malformed PDU without such an event, the closed connection ends it as aborted.
        receiver.tracker.association_ended(association_id, released=released)
        receiver.ended(association_id, "released" if released else "aborted")


def _ended(event: evt.Event, receiver: Receiver, released: bool) -> None:
    receiver.associations.release_slot(event.assoc)
    association_id = receiver.association_id(event.assoc)
    if association_id is None:
        return
    receiver.tracker.association_ended(association_id, released=released)
    receiver.ended(association_id, "released" if released else "aborted")


def handle_echo(event: evt.Event, receiver: Receiver) -> int:
    """C-ECHO: returns :data:`status.SUCCESS`."""
    receiver.audit.event("echo", "success", association_id=receiver.association_id(event.assoc))
    return status.SUCCESS


def handle_store(event: evt.Event, receiver: Receiver) -> int:
    """C-STORE: store the instance durably, then record it; only then report Success.

    Statuses: :data:`status.SUCCESS`; :data:`status.OUT_OF_RESOURCES` (below the free-space watermark or
    disk full; nothing is left in the spool; or the series already holds ``storage.max_series_instances``);
    :data:`status.CANNOT_UNDERSTAND` (empty, truncated or unparseable data set, missing/invalid Study,
    Series or SOP Instance UID, or an instance that contradicts its series: see
    :func:`dicom_node.receiving.admission.check_series`); :data:`status.DATASET_DOES_NOT_MATCH_SOP_CLASS`;
    :data:`status.PROCESSING_FAILURE` (I/O or database failure).
    """
    with receiver.associations.storing():  # a stopping node lets it finish (server.close_connections)
        return _store(event, receiver)


def _store(event: evt.Event, receiver: Receiver) -> int:
    association_id = receiver.association_id(event.assoc)
    request = cast(C_STORE, event.request)
    sop_instance = str(request.AffectedSOPInstanceUID or "")
    try:
        data = part10_file(event)
        raw = check_encoding(data, str(event.context.transfer_syntax))
        header = read_header(data, str(event.context.transfer_syntax), raw)
    except (
        MalformedDatasetError,
        InvalidDicomError,
        InvalidUIDError,
        ValueError,
        EOFError,
        KeyError,
        TypeError,
    ) as exc:
        return _refuse(receiver, association_id, status.CANNOT_UNDERSTAND, str(exc), sop_instance)
    if header.sop_instance_uid != sop_instance.rstrip("\x00 "):
        return _refuse(
            receiver,
            association_id,
            status.CANNOT_UNDERSTAND,
            f"data set SOP Instance UID {header.sop_instance_uid} differs from the request's {sop_instance}",
            sop_instance,
        )
    if header.sop_class_uid != str(request.AffectedSOPClassUID):
        return _refuse(
            receiver,
            association_id,
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"data set SOP Class UID {header.sop_class_uid!r} differs from the request's "
            f"{request.AffectedSOPClassUID}",
            sop_instance,
        )
    refusal = receiver.admit(header)
    if refusal is not None:
        return _refuse(receiver, association_id, refusal.status, refusal.reason, sop_instance)
    try:
        relative = receiver.spool.path_for(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        try:
            stored = receiver.spool.store(data, relative)
        except SpoolFullError as exc:
            return _refuse(receiver, association_id, status.OUT_OF_RESOURCES, exc.message, sop_instance)
        except SpoolWriteError as exc:
            return _refuse(receiver, association_id, status.PROCESSING_FAILURE, exc.message, sop_instance)
        try:
            result = receiver.recorder.record(
                association_id, header, stored.relative_path, stored.size, stored.sha256
            )
        except SQLAlchemyError as exc:
            LOG.error("audit database write failed for %s: %s", sop_instance, exc)
            receiver.metrics.instance_refused(status.PROCESSING_FAILURE)
            return status.PROCESSING_FAILURE
    finally:
        receiver.settle(header)
    receiver.tracker.instance_received(header, association_id, result.series_instance_count)
    receiver.metrics.instance_received()
    return status.SUCCESS


def _refuse(receiver: Receiver, association_id: int | None, code: int, reason: str, sop: str) -> int:
    LOG.warning("C-STORE of %s refused with %s: %s", sop or "?", status.describe(code), reason)
    receiver.metrics.instance_refused(code)
    try:
        receiver.audit.store_failed(association_id, status.describe(code), reason, sop or None)
    except SQLAlchemyError as exc:
        LOG.error("audit database write failed while refusing %s: %s", sop, exc)
    return code


def handler_table(receiver: Receiver) -> list[Any]:
    """The SCP's handlers with their dependencies, as pynetdicom binds them."""
    return [
        (evt.EVT_CONN_OPEN, handle_conn_open),
        (evt.EVT_REQUESTED, handle_requested, [receiver]),
        (evt.EVT_ACCEPTED, handle_accepted, [receiver]),
        (evt.EVT_REJECTED, handle_rejected, [receiver]),
        (evt.EVT_RELEASED, handle_released, [receiver]),
        (evt.EVT_ABORTED, handle_aborted, [receiver]),
        (evt.EVT_ACSE_SENT, handle_acse_sent, [receiver]),
        (evt.EVT_CONN_CLOSE, handle_conn_close, [receiver]),
        (evt.EVT_C_ECHO, handle_echo, [receiver]),
        (evt.EVT_C_STORE, handle_store, [receiver]),
    ]


def build_ae(config: SegNodeConfig) -> AE:
    """An application entity with the configured limits and presentation contexts."""
    net = config.network
    ae = AE(ae_title=config.node.ae_titles[0].ae_title)
    # The node counts associations itself (handle_requested, receiving.associations): pynetdicom's own
    # count takes in every connection thread, those that never send a request included.
    ae.maximum_associations = UNLIMITED_CONNECTIONS
    ae.acse_timeout = net.acse_timeout_s
    ae.dimse_timeout = net.dimse_timeout_s
    ae.network_timeout = net.network_timeout_s
    ae.maximum_pdu_size = net.max_pdu_size
    ae.require_called_aet = False  # checked per called AE title in handle_requested
    ae.require_calling_aet = []
    syntaxes = list(config.accept.transfer_syntaxes)
    for sop_class in config.accept.sop_classes:
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification, syntaxes)
    return ae
