"""In-process nodes (``NodeService``) for the receiving, security and reliability tests, a frozen clock, and
a raw C-STORE that sends a payload byte for byte."""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association as AssociationRow
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.scu import send_series
from tests.support.waiting import wait_until


class FrozenClock:
    """An injectable clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 8, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@contextlib.contextmanager
def running_nodes(**defaults: Any) -> Iterator[Callable[..., NodeService]]:
    """``start(config, **kwargs)`` starts a node (``defaults`` fill the keyword arguments not given); every
    node started is stopped on leaving."""
    started: list[NodeService] = []

    def start(config: SegNodeConfig, **kwargs: Any) -> NodeService:
        service = NodeService(config, **{**defaults, **kwargs})
        service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            if service.server is not None:
                service.stop()


def send_recorded(node: NodeService, files: list[Path], calling: str = "PYSCU") -> None:
    """C-STORE ``files`` to the node in one association (every status Success) and wait until the node has
    recorded its release."""
    before = audit.count(node.db, AssociationRow)
    assert send_series(node.port, files, calling) == [0x0000] * len(files)

    def released() -> bool:
        rows = audit.rows(node.db, AssociationRow)
        return len(rows) > before and rows[-1].result == "released"

    wait_until(released, what="association release recorded")


_MESSAGE_IDS = itertools.count(1)


def raw_store(
    assoc: Association,
    payload: bytes,
    sop_instance: str,
    sop_class: str = MRImageStorage,
    syntax: str = ExplicitVRLittleEndian,
) -> int:
    """Send ``payload`` as the data set of a C-STORE-RQ, byte for byte, and return the response status."""
    [context] = [
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
    ]
    request = C_STORE()
    request.MessageID = next(_MESSAGE_IDS) % 65536
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = io.BytesIO(payload)
    # pause the requestor's reactor (as pynetdicom's send_c_store does) so the response reaches us
    assoc._reactor_checkpoint.clear()
    wait_until(lambda: assoc._is_paused, 60, "requestor reactor paused", interval_s=0.01)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _cx, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None, "no C-STORE-RSP"
    return int(response.Status)
