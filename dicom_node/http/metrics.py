"""Prometheus metrics of the node, and the health of its destinations.

One :class:`NodeMetrics` per node process holds its own registry. The receiving and job code paths call
its small hooks (one line each: a counter increment or a histogram observation); the values that are a
state rather than an event (jobs by state, queue depth, spool free space, engine memory) are read when
``/metrics`` is scraped, through the callables given to :meth:`NodeMetrics.bind_state`. Metric names and
labels are listed in ``docs/operations.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dicom_node.audit.log import Clock, utc_now

#: Stages of the stage latency histogram, in the order a series goes through them.
STAGES: tuple[str, ...] = ("completion", "convert", "segment", "encode", "send")
#: Job states as the job store names them -> the stage label of the latency histogram.
_STAGE_OF_STATE = {
    "converting": "convert",
    "segmenting": "segment",
    "encoding": "encode",
    "sending": "send",
    "completion": "completion",
}
#: C-STORE refusal statuses -> the reason label (``dicom_node.receiving.statuses``).
REFUSAL_REASONS: Mapping[int, str] = {
    0xA700: "out_of_resources",
    0xA900: "sop_class_mismatch",
    0xC210: "cannot_understand",
    0x0110: "processing_failure",
}
_STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


@dataclass(frozen=True)
class DestinationState:
    """What is known of a destination: ``up``, ``down`` or ``unknown`` (nothing tried yet), since when."""

    name: str
    state: str = "unknown"
    since: datetime | None = None
    last_check_at: datetime | None = None
    last_outcome: str | None = None
    last_detail: str | None = None
    #: send | echo: what told the last outcome.
    source: str | None = None

    def down_for_s(self, now: datetime) -> float:
        if self.state != "down" or self.since is None:
            return 0.0
        return max(0.0, (now - self.since).total_seconds())


class DestinationHealth:
    """Up/down state per destination, from send attempts and C-ECHO checks. Thread-safe."""

    def __init__(self, names: Iterable[str], clock: Clock = utc_now) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._states = {name: DestinationState(name) for name in names}

    def record(self, name: str, ok: bool, outcome: str, detail: str, source: str) -> DestinationState:
        """One send attempt or C-ECHO: ``ok`` when the peer answered (a Failure status is an answer)."""
        now = self.clock()
        with self._lock:
            old = self._states.get(name, DestinationState(name))
            state = "up" if ok else "down"
            since = old.since if old.state == state and old.since is not None else now
            new = replace(
                old,
                state=state,
                since=since,
                last_check_at=now,
                last_outcome=outcome,
                last_detail=detail[:500],
                source=source,
            )
            self._states[name] = new
            return new

    def states(self) -> list[DestinationState]:
        with self._lock:
            return list(self._states.values())

    def get(self, name: str) -> DestinationState:
        with self._lock:
            return self._states.get(name, DestinationState(name))


#: Send outcomes after which the destination counts as not reachable (it did not answer usefully).
UNREACHABLE_OUTCOMES = frozenset(
    {"peer_unreachable", "association_rejected", "association_aborted", "no_response", "tls_setup_failed"}
)


@dataclass
class StateSources:
    """Callables read at scrape time; each returns the current values (empty when not known)."""

    jobs_by_state: Callable[[], Mapping[str, int]] = dict
    queue_depth: Callable[[], Mapping[str, int]] = dict
    spool_free_bytes: Callable[[], int | None] = lambda: None
    spool_watermark_bytes: int = 0
    #: (device, kind) -> bytes, e.g. ("cuda:0", "allocated").
    engine_memory: Callable[[], Mapping[tuple[str, str], int]] = dict
    engine_loaded: Callable[[], bool] = lambda: False


@dataclass(eq=False)
class _StateCollector(Collector):
    sources: StateSources
    health: DestinationHealth
    clock: Clock = field(default=utc_now)

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("segnode_jobs", "Jobs by state (from the database).", labels=["state"])
        for state, count in sorted(self.sources.jobs_by_state().items()):
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily(
            "segnode_queue_depth",
            "Work waiting for a stage: jobs queued for conversion, items between the stages, due deliveries.",
            labels=["stage"],
        )
        for stage, count in sorted(self.sources.queue_depth().items()):
            depth.add_metric([stage], count)
        yield depth
        free = self.sources.spool_free_bytes()
        if free is not None:
            yield GaugeMetricFamily(
                "segnode_spool_free_bytes", "Free bytes on the spool's file system.", value=free
            )
        yield GaugeMetricFamily(
            "segnode_spool_watermark_bytes",
            "storage.min_free_space_mb in bytes: below it instances are refused.",
            value=self.sources.spool_watermark_bytes,
        )
        memory = GaugeMetricFamily(
            "segnode_engine_memory_bytes",
            "Accelerator memory of the inference engine (torch allocator), by device and kind.",
            labels=["device", "kind"],
        )
        for (device, kind), value in sorted(self.sources.engine_memory().items()):
            memory.add_metric([device, kind], value)
        yield memory
        yield GaugeMetricFamily(
            "segnode_engine_loaded",
            "1 when the inference engine has its models loaded.",
            value=1 if self.sources.engine_loaded() else 0,
        )
        yield from self._destinations()

    def _destinations(self) -> Iterable[Metric]:
        now = self.clock()
        up = GaugeMetricFamily(
            "segnode_destination_up",
            "1: the destination answered its last send attempt or C-ECHO; 0: it did not; absent: not tried.",
            labels=["destination"],
        )
        down = GaugeMetricFamily(
            "segnode_destination_down_seconds",
            "Seconds since the destination stopped answering (0 while it answers).",
            labels=["destination"],
        )
        for item in self.health.states():
            if item.state != "unknown":
                up.add_metric([item.name], 1 if item.state == "up" else 0)
            down.add_metric([item.name], item.down_for_s(now))
        yield up
        yield down


class NodeMetrics:
    """The metrics of one node process and the hooks its code paths call."""

    def __init__(self, destinations: Iterable[str] = (), clock: Clock = utc_now) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.destinations = DestinationHealth(destinations, clock)
        r = self.registry
        self._received = Counter(
            "segnode_instances_received", "Instances stored in the spool (C-STORE Success).", registry=r
        )
        self._refused = Counter(
            "segnode_instances_refused", "C-STORE requests refused, by reason.", ["reason"], registry=r
        )
        self._associations = Counter(
            "segnode_associations", "Associations by outcome.", ["outcome"], registry=r
        )
        self._stage = Histogram(
            "segnode_stage_seconds",
            "Latency of a stage: completion (first instance to series complete), convert, segment, "
            "encode, send (first to last attempt).",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self._inference = Histogram(
            "segnode_inference_seconds",
            "Model inference time of one stack and task.",
            ["task", "device"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self._sends = Counter(
            "segnode_send_attempts",
            "C-STORE send attempts by destination and outcome.",
            ["destination", "outcome"],
            registry=r,
        )
        self._failures = Counter(
            "segnode_job_failures",
            "Jobs that ended failed, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self._notifications = Counter(
            "segnode_notifications",
            "Notifications by channel and outcome (sent, retry, suppressed, given_up).",
            ["channel", "outcome"],
            registry=r,
        )
        for stage in STAGES:
            self._stage.labels(stage)
        self._state: _StateCollector | None = None

    # -- hooks of the code paths -------------------------------------------------------------------------

    def instance_received(self) -> None:
        self._received.inc()

    def instance_refused(self, status: int) -> None:
        self._refused.labels(REFUSAL_REASONS.get(status, f"0x{status:04X}")).inc()

    def association(self, outcome: str) -> None:
        """accepted | rejected | released | aborted"""
        self._associations.labels(outcome).inc()

    def stage_finished(self, stage: str, seconds: float) -> None:
        """A stage ran (a job state name such as ``converting``, or ``completion``)."""
        self._stage.labels(_STAGE_OF_STATE.get(stage, stage)).observe(max(0.0, seconds))

    def inference_finished(self, task: str, device: str, seconds: float) -> None:
        self._inference.labels(task, device).observe(max(0.0, seconds))

    def send_attempt(self, destination: str, outcome: str, detail: str = "") -> None:
        self._sends.labels(destination, outcome).inc()
        reachable = outcome not in UNREACHABLE_OUTCOMES
        self.destinations.record(destination, reachable, outcome, detail, "send")

    def job_failed(self, stage: str | None, reason: str | None) -> None:
        self._failures.labels(stage or "", reason or "").inc()

    def notification(self, channel: str, outcome: str) -> None:
        self._notifications.labels(channel, outcome).inc()

    # -- state read at scrape time -----------------------------------------------------------------------

    def bind_state(self, sources: StateSources) -> None:
        """Read these values at each scrape (the service binds them once it is started)."""
        if self._state is None:
            self._state = _StateCollector(sources, self.destinations, self.clock)
            self.registry.register(self._state)
            self.registry.register(ProcessCollector(registry=None))
        else:
            self._state.sources = sources

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
