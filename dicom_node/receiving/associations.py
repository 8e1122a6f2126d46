"""The SCP's associations: their audit ids, which of them hold a slot of ``network.max_associations``, and
whether a C-STORE handler is running.

pynetdicom counts every acceptor thread against its own limit, a connection that never sends an
A-ASSOCIATE-RQ included, so load-balancer port probes would lock real senders out. The node counts here
instead: an association takes a slot when its request has passed the checks of ``EVT_REQUESTED`` and gives
it back when it is released, aborted or rejected, or its connection closes. A connection without a
request never holds a slot.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pynetdicom.association import Association

from config.node import NodeConfig
from dicom_node.receiving import statuses as status

LOG = logging.getLogger(__name__)


class AssociationTable:
    """Audit ids and slots of the associations of one SCP; every method is thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: id(association) -> (association, audit row id), from the request until the connection closes.
        self._ids: dict[int, tuple[Association, int]] = {}
        #: id(association) of the associations holding a slot.
        self._slots: set[int] = set()
        #: id(association) of the associations whose A-RELEASE-RP has been handed to the DUL.
        self._released: set[int] = set()
        self._lock = threading.Lock()
        self._stores = 0
        self._idle = threading.Condition(self._lock)

    def requested(self, assoc: Association, association_id: int) -> None:
        """An A-ASSOCIATE-RQ was received and recorded as ``association_id``."""
        with self._lock:
            self._ids[id(assoc)] = (assoc, association_id)

    def association_id(self, assoc: Association) -> int | None:
        with self._lock:
            entry = self._ids.get(id(assoc))
        return None if entry is None else entry[1]

    def take_slot(self, assoc: Association) -> bool:
        """Give ``assoc`` a slot; False when all ``limit`` slots are held by other associations."""
        with self._lock:
            if id(assoc) in self._slots:
                return True
            if len(self._slots) >= self.limit:
                return False
            self._slots.add(id(assoc))
            return True

    def release_slot(self, assoc: Association) -> None:
        with self._lock:
            self._slots.discard(id(assoc))

    def release_answered(self, assoc: Association) -> None:
        """The node answered ``assoc``'s A-RELEASE-RQ: the association is released, whichever of the
        connection close and ``EVT_RELEASED`` is seen first."""
        with self._lock:
            if id(assoc) in self._ids:
                self._released.add(id(assoc))

    def forget(self, assoc: Association) -> tuple[int | None, bool]:
        """The connection of ``assoc`` closed: release its slot; returns its audit id (None: no request)
        and whether its release was answered (:meth:`release_answered`)."""
        with self._lock:
            self._slots.discard(id(assoc))
            entry = self._ids.pop(id(assoc), None)
            released = id(assoc) in self._released
            self._released.discard(id(assoc))
        return (None if entry is None else entry[1]), released

    def pop_dead(self) -> list[int]:
        """Forget the associations whose thread has ended without any closing event; their audit ids."""
        with self._lock:
            dead = [key for key, (assoc, _) in self._ids.items() if not assoc.is_alive()]
            for key in dead:
                self._slots.discard(key)
                self._released.discard(key)
            return [self._ids.pop(key)[1] for key in dead]

    @contextmanager
    def storing(self) -> Iterator[None]:
        """Marks a running C-STORE handler (see :meth:`wait_idle`)."""
        with self._lock:
            self._stores += 1
        try:
            yield
        finally:
            with self._lock:
                self._stores -= 1
                if self._stores == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no C-STORE handler runs (at most ``timeout`` seconds); True if none runs."""
        with self._lock:
            return self._idle.wait_for(lambda: self._stores == 0, timeout)


@dataclass(frozen=True, slots=True)
class Rejection:
    result: int
    source: int
    reason: int
    code: str
    detail: str


class AccessPolicy:
    """Which calling AE titles (and addresses) may associate with which called AE title."""

    def __init__(self, node: NodeConfig, resolve: Callable[[str], set[str]] | None = None) -> None:
        self._called = {item.ae_title: item for item in node.ae_titles}
        self._resolve = resolve or _resolve_host

    def check(self, calling: str, called: str, address: str) -> Rejection | None:
        calling, called = calling.strip(), called.strip()
        entry = self._called.get(called)
        if entry is None:
            return Rejection(
                status.REJECTED_PERMANENT,
                status.SOURCE_SERVICE_USER,
                status.REASON_CALLED_AE_NOT_RECOGNISED,
                "called_ae_not_recognised",
                f"called AE title {called!r} is not one of {sorted(self._called)}",
            )
        if entry.accept_any_caller:
            return None
        peers = [p for p in entry.allowed_callers if p.ae_title == calling]
        if not peers:
            return Rejection(
                status.REJECTED_PERMANENT,
                status.SOURCE_SERVICE_USER,
                status.REASON_CALLING_AE_NOT_RECOGNISED,
                "calling_ae_not_recognised",
                f"calling AE title {calling!r} may not send to {called!r}",
            )
        for peer in peers:
            if peer.host is None or address in self._resolve(peer.host):
                return None
        return Rejection(
            status.REJECTED_PERMANENT,
            status.SOURCE_SERVICE_USER,
            status.REASON_CALLING_AE_NOT_RECOGNISED,
            "calling_address_not_allowed",
            f"calling AE title {calling!r} connected from {address}, which is not its configured host",
        )


def _resolve_host(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        LOG.warning("cannot resolve configured peer host %r; its associations are refused", host)
        return set()
