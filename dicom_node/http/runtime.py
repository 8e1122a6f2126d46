"""The operations side of a running node: the HTTP service, the destinations' C-ECHO checks and the
notifier, started and stopped with the node (``dicom_node.service.NodeService``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from config.model import SegNodeConfig
from dicom_node.audit.log import AuditLog
from dicom_node.http.health import EchoMonitor, EngineStatus
from dicom_node.http.metrics import NodeMetrics, StateSources
from dicom_node.http.notify import Notifier
from dicom_node.jobs import queries
from dicom_node.jobs.segment import EngineLike, WarmUp

if TYPE_CHECKING:
    from dicom_node.http.server import HttpServer
    from dicom_node.jobs.context import PipelineContext

LOG = logging.getLogger(__name__)


class PipelineView(Protocol):
    """What the operations side reads of the job pipeline (:class:`dicom_node.jobs.workers.Pipeline`)."""

    warm_up_state: WarmUp
    warm_up_error: str | None

    @property
    def loaded_engine(self) -> EngineLike | None: ...

    def queue_depth(self) -> dict[str, int]: ...

    def wake(self) -> None: ...


def engine_status(pipeline: PipelineView | None) -> EngineStatus:
    """What the pipeline's engine has loaded (``pipeline``: None in a process that only receives)."""
    if pipeline is None:
        return EngineStatus("absent", "this process receives only (no pipeline, no engine)")
    engine = pipeline.loaded_engine
    loaded = getattr(engine, "loaded_models", None)
    models = tuple(loaded()) if callable(loaded) else ()
    device = models[0].split("@", 1)[1] if models else None
    state = pipeline.warm_up_state
    if state is WarmUp.failed:
        return EngineStatus("failed", f"models not loaded at start: {pipeline.warm_up_error}", device, models)
    if state is WarmUp.lazy:
        return EngineStatus(
            "lazy", "models load with the first series (pipeline.warm_up: false)", device, models
        )
    if state is WarmUp.loading:
        return EngineStatus("loading", "loading the models of inference.default_task", device, models)
    return EngineStatus(
        "loaded", f"{len(models)} model(s) loaded" + (f" on {device}" if device else ""), device, models
    )


def engine_memory(pipeline: PipelineView | None) -> Mapping[tuple[str, str], int]:
    """Accelerator memory held by torch (only where torch is already imported and a GPU is in use)."""
    torch = sys.modules.get("torch")
    if torch is None or pipeline is None or pipeline.loaded_engine is None:
        return {}
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        out: dict[tuple[str, str], int] = {}
        for index in range(torch.cuda.device_count()):
            name = f"cuda:{index}"
            out[(name, "allocated")] = int(torch.cuda.memory_allocated(index))
            out[(name, "reserved")] = int(torch.cuda.memory_reserved(index))
            out[(name, "peak_allocated")] = int(torch.cuda.max_memory_allocated(index))
        return out
    except RuntimeError:
        return {}


@dataclass
class Operations:
    """HTTP service + C-ECHO checks + notifier of one node."""

    config: SegNodeConfig
    audit: AuditLog
    metrics: NodeMetrics
    #: The job actions' context (``dicom_node.jobs.admin``).
    actions: PipelineContext
    spool_free_bytes: Callable[[], int | None]
    pipeline: PipelineView | None = None
    environ: Mapping[str, str] | None = None
    http: HttpServer | None = field(init=False, default=None)
    echo: EchoMonitor | None = field(init=False, default=None)
    notifier: Notifier | None = field(init=False, default=None)

    def queue_depth(self) -> Mapping[str, int]:
        counts = queries.jobs_by_state(self.audit.db)
        depth = {"queued": counts.get("queued", 0), "sending": queries.pending_deliveries(self.audit.db)}
        if self.pipeline is not None:
            depth.update(self.pipeline.queue_depth())
        return depth

    def start(self) -> None:
        self.metrics.bind_state(
            StateSources(
                jobs_by_state=lambda: queries.jobs_by_state(self.audit.db),
                queue_depth=self.queue_depth,
                spool_free_bytes=self.spool_free_bytes,
                spool_watermark_bytes=self.config.storage.min_free_space_mb * 1024 * 1024,
                engine_memory=lambda: engine_memory(self.pipeline),
                engine_loaded=lambda: engine_status(self.pipeline).state == "loaded",
            )
        )
        http = self.config.http
        if http.enabled:
            self._start_http()
        notifier = Notifier(self.config, self.audit, self.metrics, self.spool_free_bytes)
        if notifier.active:
            self.notifier = notifier
            notifier.start()
        # the C-ECHO checks feed the dashboard, readiness and notifications: only where one of them runs
        watched = http.enabled or self.notifier is not None
        if watched and http.destination_echo_interval_s > 0 and self.config.destinations:
            self.echo = EchoMonitor(self.config, self.metrics.destinations, http.destination_echo_interval_s)
            self.echo.start()

    def _start_http(self) -> None:
        from dicom_node.http.app import create_app
        from dicom_node.http.auth import Credentials
        from dicom_node.http.context import HttpContext
        from dicom_node.http.server import HttpServer

        context = HttpContext(
            config=self.config,
            audit=self.audit,
            actions=self.actions,
            metrics=self.metrics,
            credentials=Credentials(self.config.http, self.environ),
            engine_status=lambda: engine_status(self.pipeline),
            spool_free_bytes=self.spool_free_bytes,
            wake=self.pipeline.wake if self.pipeline is not None else (lambda: None),
        )
        if not context.credentials.any:
            LOG.warning(
                "HTTP service: no user or token can log in (set the variables named in http.users "
                "and http.tokens); every request is refused"
            )
        self.http = HttpServer(create_app(context), self.config.http)
        self.http.start()

    @property
    def http_port(self) -> int:
        if self.http is None:
            raise RuntimeError("the HTTP service is not running")
        return int(self.http.port)

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None
        if self.echo is not None:
            self.echo.stop()
            self.echo = None
        if self.http is not None:
            self.http.stop()
            self.http = None
