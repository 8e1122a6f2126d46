"""Health and readiness of the node, and the periodic C-ECHO check of its destinations.

Readiness is ``ready`` when the database answers, the spool is above its free-space watermark and the
inference engine has its models loaded; ``degraded`` when, in addition, a destination does not answer
(the node receives and segments, results wait for the destination); ``not_ready`` otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from config.model import SegNodeConfig
from config.routing import DestinationConfig
from dicom_node.audit.database import Database
from dicom_node.http.metrics import DestinationHealth

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStatus:
    """Whether this process runs the pipeline, and whether its engine has models loaded."""

    #: running | loading | loaded | failed | lazy | absent
    state: str
    detail: str = ""
    device: str | None = None
    models: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.state in {"loaded", "lazy", "absent"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def database_check(db: Database) -> Check:
    try:
        with db.read() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return Check("database", False, f"the audit database does not answer: {type(exc).__name__}")
    return Check("database", True, f"{db.engine.dialect.name} answers")


def spool_check(free_bytes: int | None, watermark_bytes: int) -> Check:
    data = {"free_bytes": free_bytes, "watermark_bytes": watermark_bytes}
    if free_bytes is None:
        return Check("spool", False, "the spool's file system cannot be read", data)
    mib = free_bytes // (1024 * 1024)
    if free_bytes < watermark_bytes:
        return Check(
            "spool",
            False,
            f"{mib} MiB free, below the watermark of {watermark_bytes // (1024 * 1024)} MiB: new "
            "instances are refused (0xA700)",
            data,
        )
    return Check("spool", True, f"{mib} MiB free", data)


def engine_check(status: EngineStatus) -> Check:
    data = {"state": status.state, "device": status.device, "models": list(status.models)}
    return Check("engine", status.ok, status.detail or status.state, data)


def destinations_check(config: SegNodeConfig, health: DestinationHealth) -> Check:
    states = {s.name: s for s in health.states()}
    down = [name for name in config.destinations if states.get(name) and states[name].state == "down"]
    data = {
        name: {
            "state": states[name].state if name in states else "unknown",
            "last_outcome": states[name].last_outcome if name in states else None,
        }
        for name in config.destinations
    }
    if down:
        return Check("destinations", False, f"not answering: {', '.join(down)}", data)
    return Check("destinations", True, f"{len(config.destinations)} configured, none known down", data)


def readiness(checks: list[Check]) -> str:
    """ready | degraded (only destinations fail) | not_ready."""
    failed = {c.name for c in checks if not c.ok}
    if not failed:
        return "ready"
    return "degraded" if failed == {"destinations"} else "not_ready"


# ------------------------------------------------------------------------------------------ C-ECHO


def echo(name: str, destination: DestinationConfig, config: SegNodeConfig) -> tuple[bool, str, str]:
    """One C-ECHO to a destination: (answered, outcome code, detail)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.outputs.sender import tls_args_for
    from dicom_node.receiving.tls import TlsSetupError

    sending = config.sending
    ae = AE(ae_title=destination.calling_ae_title or sending.calling_ae_title)
    ae.acse_timeout = sending.acse_timeout_s
    ae.dimse_timeout = sending.dimse_timeout_s
    ae.network_timeout = sending.network_timeout_s
    ae.connection_timeout = sending.connect_timeout_s
    ae.add_requested_context(Verification)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=tls_args_for(destination),
        )
    except TlsSetupError as exc:
        return False, "tls_setup_failed", f"{where}: {exc.message}"
    except OSError as exc:
        return False, "peer_unreachable", f"{where}: {exc}"
    if assoc.is_rejected:
        return False, "association_rejected", f"{where}: association rejected"
    if not assoc.is_established:
        return False, "peer_unreachable", f"{where}: no association (peer down?)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = status.get("Status") if status else None
    if code is None:
        return False, "no_response", f"{where}: no C-ECHO response"
    return True, "echo_ok" if int(code) == 0 else "echo_status", f"{where}: C-ECHO status 0x{int(code):04X}"


class EchoMonitor(threading.Thread):
    """C-ECHOes every destination every ``interval_s`` seconds and records the answer in the health."""

    def __init__(
        self,
        config: SegNodeConfig,
        health: DestinationHealth,
        interval_s: float,
        probe: Callable[[str, DestinationConfig, SegNodeConfig], tuple[bool, str, str]] = echo,
    ) -> None:
        super().__init__(name="segnode-echo", daemon=True)
        self.config = config
        self.health = health
        self.interval_s = interval_s
        self.probe = probe
        self._stop_event = threading.Event()

    def run_once(self) -> None:
        for name, destination in self.config.destinations.items():
            if self._stop_event.is_set():
                return
            ok, outcome, detail = self.probe(name, destination, self.config)
            before = self.health.get(name).state
            self.health.record(name, ok, outcome, detail, "echo")
            if before != ("up" if ok else "down"):
                (LOG.info if ok else LOG.warning)("destination %s: %s (%s)", name, outcome, detail)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.run_once()
            except Exception:  # a probe bug must not end the monitor; it is logged and tried again
                LOG.exception("destination check failed")
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
