"""A real C-STORE / C-ECHO SCU (pynetdicom) talking to a node on 127.0.0.1."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from tests.support.ports import LOOPBACK

Contexts = list[tuple[str, list[str]]]
#: MR Image Storage in Explicit and Implicit VR Little Endian.
MR_CONTEXTS: Contexts = [(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


def contexts_of(files: list[Path]) -> Contexts:
    """One presentation context per SOP class of ``files``, proposing every transfer syntax they use."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in headers})
    return [(sop_class, syntaxes) for sop_class in sorted({str(ds.SOPClassUID) for ds in headers})]


def associate(
    port: int,
    calling: str = "PYSCU",
    called: str = "SEGNODE",
    *,
    contexts: Contexts | None = None,
    files: list[Path] | None = None,
    bind_address: str = LOOPBACK,
    tls: ssl.SSLContext | None = None,
    timeout_s: float = 30,
) -> Association:
    """An association request to ``127.0.0.1:port`` proposing ``contexts`` (or those of ``files``, or MR
    Image Storage) and Verification, over TLS with the client context ``tls`` if given; the caller checks
    how it was answered."""
    ae = AE(ae_title=calling)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntaxes in contexts or (contexts_of(files) if files else MR_CONTEXTS):
        ae.add_requested_context(sop_class, syntaxes)
    ae.add_requested_context(Verification)
    tls_args = None if tls is None else (tls, LOOPBACK)
    return ae.associate(LOOPBACK, port, ae_title=called, bind_address=(bind_address, 0), tls_args=tls_args)


@dataclass
class StoreLog:
    """What a C-STORE SCU was told, per SOP Instance UID."""

    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def successes(self) -> list[str]:
        return [uid for uid, status in self.statuses.items() if status == 0x0000]


def store(assoc: Association, files: list[Path], log: StoreLog | None = None) -> list[int]:
    """C-STORE each file on an open association; returns the statuses (-1: no response), also recorded in
    ``log``. Stops when the association ends."""
    log = log if log is not None else StoreLog()
    statuses = []
    for path in files:
        if not assoc.is_established:
            break
        ds = pydicom.dcmread(path)
        response = assoc.send_c_store(ds)
        status = int(response.Status) if response is not None and "Status" in response else -1
        log.statuses[str(ds.SOPInstanceUID)] = status
        statuses.append(status)
    return statuses


def send_series(port: int, files: list[Path], calling: str = "PYSCU", called: str = "SEGNODE") -> list[int]:
    """One association: C-STORE every file, release; returns the statuses."""
    assoc = associate(port, calling, called, files=files)
    assert assoc.is_established, f"association {calling} -> {called} on port {port} not established"
    try:
        return store(assoc, files)
    finally:
        assoc.release()


def rejection(assoc: Association) -> tuple[int, int, int]:
    """Result, source and reason of the A-ASSOCIATE-RJ the node answered ``assoc`` with (the association
    must have been rejected)."""
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    assert rj is not None
    return (rj.result, rj.result_source, rj.diagnostic)
