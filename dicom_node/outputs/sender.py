"""C-STORE SCU: send SegNode's results to a destination, classify what happened, decide when to retry.

:func:`send_datasets` opens one association, stores each dataset and returns a :class:`SendResult` (it
does not raise for network or peer failures: those are outcomes the pipeline records). Every returned
status is checked: Success, Warning (recorded, the object is stored), Failure (classified as retryable or
not by PS3.4 B.2.3 / PS3.7 C). Association failures are told apart: the peer is unreachable, rejected the
association (permanently or transiently), accepted no presentation context for the objects, aborted, or
did not answer.

:func:`next_attempt_at` is the retry policy as a pure function of the attempt count and the clock, so
that the pipeline can persist the attempt count and the first attempt time and resume after a restart.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydicom.dataset import Dataset

from config.errors import SegNodeError
from config.routing import DestinationConfig, RetryConfig, SendingConfig
from dicom_node.receiving.tls import TlsSetupError, client_context

logger = logging.getLogger(__name__)

#: Uncompressed transfer syntaxes pynetdicom can re-encode between.
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")

#: Failure statuses that a later attempt will not fix (the object or the request is wrong for the peer):
#: 0x0122 Refused: SOP Class not supported, 0x0124 Refused: Not authorized, 0xA9xx Error: Data Set does not
#: match SOP Class, 0xCxxx Error: Cannot understand. Every other failure (0xA7xx Out of Resources,
#: 0x0110 Processing failure, unknown codes) may be temporary and is retried.
_PERMANENT_FAILURES = (0x0122, 0x0124)


class SendOutcome(StrEnum):
    """What happened to a send (and the stable reason code the audit log shows)."""

    SUCCESS = "success"
    #: Stored, with a Warning status (e.g. 0xB000 Coercion of data elements).
    WARNING = "warning_status"
    #: The peer answered a C-STORE with a Failure status.
    FAILURE_STATUS = "failure_status"
    #: No TCP connection (peer down, port closed, host unknown, connect timeout).
    PEER_UNREACHABLE = "peer_unreachable"
    ASSOCIATION_REJECTED = "association_rejected"
    #: The association was aborted (A-ABORT or A-P-ABORT) before all objects were stored.
    ASSOCIATION_ABORTED = "association_aborted"
    #: The peer accepted the association but no presentation context for the objects' SOP class/TS.
    NO_ACCEPTED_CONTEXT = "no_accepted_context"
    #: No (valid) response to a C-STORE within the DIMSE timeout.
    NO_RESPONSE = "no_response"
    #: The destination's ``tls`` settings cannot be used (a certificate, key or CA file is missing/bad).
    TLS_SETUP_FAILED = "tls_setup_failed"


#: Outcomes after which the objects are at the destination.
DELIVERED = frozenset({SendOutcome.SUCCESS, SendOutcome.WARNING})


class SendError(SegNodeError):
    """A send failed; ``reason`` is the outcome's code and ``result`` holds the details."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(f"C-STORE to {result.destination}: {result.detail}", reason=str(result.outcome))
        self.result = result


@dataclass(frozen=True)
class InstanceResult:
    """The C-STORE of one object."""

    sop_instance_uid: str
    status: int | None
    outcome: SendOutcome
    detail: str


@dataclass(frozen=True)
class SendResult:
    """The outcome of one send attempt to one destination."""

    destination: str
    outcome: SendOutcome
    retryable: bool
    detail: str
    instances: tuple[InstanceResult, ...] = field(default=())
    duration_s: float = 0.0

    @property
    def delivered(self) -> bool:
        """Whether the objects are at the destination (success, or stored with a warning)."""
        return self.outcome in DELIVERED

    @property
    def warnings(self) -> list[InstanceResult]:
        """The objects stored with a Warning status."""
        return [i for i in self.instances if i.outcome is SendOutcome.WARNING]

    def raise_for_failure(self) -> None:
        """:class:`SendError` unless the objects were delivered."""
        if not self.delivered:
            raise SendError(self)


def _status_category(status: int) -> str:
    from pynetdicom.status import code_to_category

    return str(code_to_category(status))


def _describe_status(status: int) -> str:
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

    entry = STORAGE_SERVICE_CLASS_STATUS.get(status)
    text = f"{entry[0]}: {entry[1]}" if entry else _status_category(status)
    return f"0x{status:04X} {text}"


def failure_is_retryable(status: int) -> bool:
    """Whether a C-STORE Failure status may go away on a later attempt."""
    if status in _PERMANENT_FAILURES:
        return False
    return not (0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF)


def _usable(ds: Dataset) -> set[str]:
    """Transfer syntaxes a dataset can be sent in (pynetdicom converts between the uncompressed ones)."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    return set(_UNCOMPRESSED) if ts in _UNCOMPRESSED else {ts}


def _contexts(datasets: Sequence[Dataset]) -> list[tuple[str, list[str]]]:
    """Presentation contexts to propose: per SOP class, one for the uncompressed syntaxes and one per
    compressed syntax (the acceptor picks one transfer syntax per context)."""
    out: list[tuple[str, list[str]]] = []
    for ds in datasets:
        ts = str(ds.file_meta.TransferSyntaxUID)
        wanted = list(_UNCOMPRESSED) if ts in _UNCOMPRESSED else [ts]
        context = (str(ds.SOPClassUID), wanted)
        if context not in out:
            out.append(context)
    return out


def _rejection(assoc: Any, received: Sequence[Any]) -> Any | None:
    """The A-ASSOCIATE-RJ primitive if the peer rejected the association, else ``None``.

    A peer that rejects and closes the connection at once (DCMTK's storescp does) can close it before
    pynetdicom's requestor looks at the answer; pynetdicom then reports an abort without a primitive,
    although the A-ASSOCIATE-RJ PDU arrived. The PDUs received while negotiating tell the two apart.
    """
    from pynetdicom.pdu import A_ASSOCIATE_RJ

    if assoc.is_rejected:
        return assoc.acceptor.primitive
    if assoc.is_established:
        return None
    for pdu in received:
        if isinstance(pdu, A_ASSOCIATE_RJ):
            return pdu.to_primitive()
    return None


def _rejection_detail(rj: Any) -> tuple[str, bool]:
    """Text and retryability of an A-ASSOCIATE-RJ (PS3.8 9.3.4: result 1 permanent, 2 transient)."""
    transient = getattr(rj, "result", None) == 0x02
    kind = "transient" if transient else "permanent"
    source = getattr(rj, "source_str", None) or "unknown source"
    reason = getattr(rj, "reason_str", None) or "no reason given"
    return f"association rejected ({kind}) by {source}: {reason}", transient


def tls_args_for(destination: DestinationConfig) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for the destination, or ``None`` for plain TCP."""
    tls = destination.tls
    if not tls.enabled or tls.ca_certificates is None:
        return None
    for key, path in (
        ("ca_certificates", tls.ca_certificates),
        ("certificate", tls.certificate),
        ("private_key", tls.private_key),
    ):
        if path is not None and not path.is_file():
            raise TlsSetupError(f"tls.{key}: {path} does not exist or is not a file")
    try:
        context = client_context(tls.ca_certificates, tls.certificate, tls.private_key, tls.min_version)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TlsSetupError(f"tls: cannot load the certificates: {exc}") from exc
    return context, tls.server_hostname or destination.host


class _Attempt:
    """One send attempt: where it goes, when it started, and its result once it ends."""

    def __init__(self, destination_name: str, destination: DestinationConfig) -> None:
        self.destination_name = destination_name
        self.where = f"{destination_name} ({destination.ae_title}@{destination.host}:{destination.port})"
        self.started = time.monotonic()

    def done(
        self,
        outcome: SendOutcome,
        retryable: bool,
        detail: str,
        instances: Sequence[InstanceResult] = (),
    ) -> SendResult:
        """The attempt's result (logged; a delivered result is never retryable)."""
        result = SendResult(
            destination=self.destination_name,
            outcome=outcome,
            retryable=retryable and outcome not in DELIVERED,
            detail=detail,
            instances=tuple(instances),
            duration_s=time.monotonic() - self.started,
        )
        log = logger.info if result.delivered else logger.warning
        log("C-STORE to %s: %s: %s", self.where, outcome, detail)
        return result


def _application_entity(
    datasets: Sequence[Dataset], destination: DestinationConfig, sending: SendingConfig
) -> Any:
    """pynetdicom's AE with the timeouts of ``sending`` and the presentation contexts the datasets need."""
    from pynetdicom import AE

    ae = AE(ae_title=destination.calling_ae_title or sending.calling_ae_title)
    ae.acse_timeout = sending.acse_timeout_s
    ae.dimse_timeout = sending.dimse_timeout_s
    ae.network_timeout = sending.network_timeout_s
    ae.connection_timeout = sending.connect_timeout_s
    for sop_class, syntaxes in _contexts(datasets):
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def _negotiation_failure(
    assoc: Any, received: Sequence[Any], datasets: Sequence[Dataset], where: str
) -> tuple[SendOutcome, bool, str] | None:
    """Outcome, retryability and detail of an association that was not established, else ``None``."""
    rejection = _rejection(assoc, received)
    if rejection is not None:
        detail, transient = _rejection_detail(rejection)
        return SendOutcome.ASSOCIATION_REJECTED, transient, f"{where}: {detail}"
    if assoc.is_established:
        return None
    # pynetdicom marks every failed negotiation as aborted; what the peer answered tells them apart.
    answer = assoc.acceptor.primitive
    if answer is None:
        return SendOutcome.PEER_UNREACHABLE, True, f"{where}: connection failed (peer down?)"
    if getattr(answer, "result", None) == 0x00:  # A-ASSOCIATE-AC, but no context usable
        offered = ", ".join(f"{c} [{', '.join(t)}]" for c, t in _contexts(datasets))
        return (
            SendOutcome.NO_ACCEPTED_CONTEXT,
            False,
            f"{where}: the peer accepted no presentation context for {offered}",
        )
    return SendOutcome.ASSOCIATION_ABORTED, True, f"{where}: association aborted while negotiating"


def _store_one(
    assoc: Any, ds: Dataset, accepted: set[tuple[str, str]], where: str, sending: SendingConfig
) -> tuple[InstanceResult, bool]:
    """The C-STORE of one dataset on the established association, and whether a failure is retryable."""
    uid = str(ds.SOPInstanceUID)
    if not any((str(ds.SOPClassUID), ts) in accepted for ts in _usable(ds)):
        detail = (
            f"{where}: no presentation context accepted for SOP Class {ds.SOPClassUID} in transfer "
            f"syntax {ds.file_meta.TransferSyntaxUID}"
        )
        return InstanceResult(uid, None, SendOutcome.NO_ACCEPTED_CONTEXT, detail), False
    sent_at = time.monotonic()
    response = assoc.send_c_store(ds)
    status = response.get("Status") if response else None
    if status is None:
        # pynetdicom returns an empty response both when the peer aborts and when the DIMSE
        # timeout expires (it then aborts itself): the time waited tells them apart.
        waited = time.monotonic() - sent_at
        if waited >= sending.dimse_timeout_s * 0.95:
            detail = f"{where}: no C-STORE response for {uid} within {sending.dimse_timeout_s:g} s"
            return InstanceResult(uid, None, SendOutcome.NO_RESPONSE, detail), True
        detail = f"{where}: association aborted during C-STORE of {uid}"
        return InstanceResult(uid, None, SendOutcome.ASSOCIATION_ABORTED, detail), True
    code = int(status)
    text = _describe_status(code)
    comment = str(response.get("ErrorComment", "") or "").strip()
    if comment:
        text += f" ({comment})"
    category = _status_category(code)
    if category == "Success":
        return InstanceResult(uid, code, SendOutcome.SUCCESS, text), False
    if category == "Warning":
        return InstanceResult(uid, code, SendOutcome.WARNING, text), False
    detail = f"{where}: C-STORE of {uid} failed: {text}"
    return InstanceResult(uid, code, SendOutcome.FAILURE_STATUS, detail), failure_is_retryable(code)


def _store_all(
    assoc: Any, datasets: Sequence[Dataset], attempt: _Attempt, sending: SendingConfig
) -> SendResult:
    """Store the datasets one by one on the established association, stopping at the first that is not
    delivered; the association is released at the end."""
    instances: list[InstanceResult] = []
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        for ds in datasets:
            instance, retryable = _store_one(assoc, ds, accepted, attempt.where, sending)
            instances.append(instance)
            if instance.outcome not in DELIVERED:
                return attempt.done(instance.outcome, retryable, instance.detail, instances)
    finally:
        if assoc.is_established:
            assoc.release()
    warned = [i for i in instances if i.outcome is SendOutcome.WARNING]
    if warned:
        detail = f"stored {len(instances)} object(s), {len(warned)} with warning: {warned[0].detail}"
        return attempt.done(SendOutcome.WARNING, False, detail, instances)
    return attempt.done(SendOutcome.SUCCESS, False, f"stored {len(instances)} object(s)", instances)


def send_datasets(
    datasets: Sequence[Dataset],
    destination_name: str,
    destination: DestinationConfig,
    sending: SendingConfig,
) -> SendResult:
    """Store ``datasets`` at ``destination`` over one association.

    Every C-STORE response status is checked; the send stops at the first object that is not stored.
    Network and peer failures are outcomes, not exceptions: the caller records them and decides on a retry
    (:func:`decide_retry`).

    Parameters
    ----------
    datasets: Sequence[pydicom.dataset.Dataset]
        The objects to store, with file meta: each is sent in its own transfer syntax (the uncompressed
        ones may be converted into each other). An empty sequence is a success without an association.
    destination_name: str
        The destination's name in the routing configuration (named in the result and the log).
    destination: config.routing.DestinationConfig
        Address, called AE title, optional calling AE title and TLS settings of the peer.
    sending: config.routing.SendingConfig
        Default calling AE title and the ACSE, DIMSE, network and connection timeouts.

    Returns
    -------
    SendResult
        The outcome (:class:`SendOutcome`), whether a later attempt may succeed, a detail naming the
        destination, the result of every object tried and the duration.

    Raises
    ------
    Nothing for network, TLS or peer failures; only programming errors (e.g. a dataset without file meta)
    propagate.
    """
    from pynetdicom import evt

    attempt = _Attempt(destination_name, destination)
    where = attempt.where
    if not datasets:
        return attempt.done(SendOutcome.SUCCESS, False, "nothing to send")
    ae = _application_entity(datasets, destination, sending)
    try:
        tls_args = tls_args_for(destination)
    except TlsSetupError as exc:
        return attempt.done(SendOutcome.TLS_SETUP_FAILED, False, f"{where}: {exc.message}")
    received: list[Any] = []  # PDUs of the negotiation (see _rejection)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))],
        )
    except OSError as exc:  # e.g. an unresolvable host name
        return attempt.done(SendOutcome.PEER_UNREACHABLE, True, f"{where}: {exc}")
    failure = _negotiation_failure(assoc, received, datasets, where)
    if failure is not None:
        return attempt.done(*failure)
    return _store_all(assoc, datasets, attempt, sending)


def retry_policy(destination: DestinationConfig, sending: SendingConfig) -> RetryConfig:
    """The destination's own retry policy, else the sending default."""
    return destination.retry or sending.retry


def retry_delay_s(policy: RetryConfig, attempts_made: int) -> float:
    """Wait after the ``attempts_made``-th failed attempt: initial * factor^(n-1), at most max_delay_s."""
    if attempts_made < 1:
        raise ValueError("attempts_made counts failed attempts and starts at 1")
    exponent = attempts_made - 1
    if policy.factor > 1.0 and exponent * math.log(policy.factor) >= math.log(
        policy.max_delay_s / policy.initial_delay_s
    ):
        return policy.max_delay_s
    return min(policy.initial_delay_s * policy.factor**exponent, policy.max_delay_s)


def next_attempt_at(
    policy: RetryConfig, attempts_made: int, first_attempt_at: datetime, now: datetime
) -> datetime | None:
    """When to try again after ``attempts_made`` failed attempts, or ``None`` to give up.

    Gives up when ``max_attempts`` attempts were made, or when the next attempt would start more than
    ``max_total_s`` after the first one. Pure: the caller passes the clock.
    """
    if policy.max_attempts is not None and attempts_made >= policy.max_attempts:
        return None
    at = now + timedelta(seconds=retry_delay_s(policy, attempts_made))
    if (at - first_attempt_at).total_seconds() > policy.max_total_s:
        return None
    return at


def decide_retry(
    result: SendResult, policy: RetryConfig, attempts_made: int, first_attempt_at: datetime, now: datetime
) -> datetime | None:
    """Next attempt time for a failed result (``None``: delivered, not retryable, or policy exhausted)."""
    if result.delivered or not result.retryable:
        return None
    return next_attempt_at(policy, attempts_made, first_attempt_at, now)
