"""Series completion: when a received series is ready to become a job.

Rules (``completion`` in the configuration), evaluated on an injectable clock:

* **expected count**: where every instance so far carries the same Images in Acquisition (0020,1002) and
  Acquisition Number, that count is trusted; the series completes as soon as it is reached. More instances
  than announced make it untrusted.
* **association release**: every association that delivered instances of the series has been released
  (not aborted) — unless a trusted expected count is not reached yet.
* **quiet period**: no instance for ``quiet_period_s`` seconds; the fallback that always fires.

The tracker is pure logic (no database, no threads) so tests drive it with a frozen clock; the
:class:`SeriesCompleter` turns ready series into ``queued`` jobs, and :class:`CompletionTimer` polls it
off the association threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from config.node import CompletionConfig
from dicom_node.audit.log import AuditLog, Clock, InstanceHeader, utc_now
from dicom_node.audit.tables import Series, SeriesState
from dicom_node.http.metrics import NodeMetrics
from dicom_node.jobs.store import JobInfo, JobStore

LOG = logging.getLogger(__name__)


@dataclass(slots=True)
class _Tracked:
    study_instance_uid: str
    last_at: datetime
    count: int
    expected: int | None = None
    expected_key: tuple[int, str | None] | None = None
    expected_trusted: bool = True
    open_associations: set[int] = field(default_factory=set)
    released_associations: set[int] = field(default_factory=set)
    #: a rule that already fired but whose database write failed (retried at the next poll)
    fired: str | None = None


@dataclass(frozen=True, slots=True)
class ReadySeries:
    series_instance_uid: str
    study_instance_uid: str
    #: the rule that fired: expected_count | association_release | quiet_period
    rule: str
    instance_count: int
    #: the associations of this process that delivered instances of the series (a cluster's receivers
    #: check the others' in the database, ``dicom_node.cluster.completion``)
    associations: frozenset[int] = frozenset()


class CompletionTracker:
    """Tracks open series in memory and says which are complete. Thread-safe."""

    def __init__(self, policy: CompletionConfig, clock: Clock = utc_now) -> None:
        self.policy = policy
        self.clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, _Tracked] = {}

    def instance_received(self, header: InstanceHeader, association_id: int | None, count: int) -> None:
        """Note an instance of a series (``count``: instances of the series now in the database)."""
        now = self.clock()
        with self._lock:
            item = self._series.get(header.series_instance_uid)
            if item is None:
                item = _Tracked(header.study_instance_uid, now, count)
                self._series[header.series_instance_uid] = item
            item.last_at = now
            item.count = count
            if association_id is not None:
                item.open_associations.add(association_id)
            self._note_expected(item, header)

    @staticmethod
    def _note_expected(item: _Tracked, header: InstanceHeader) -> None:
        if not item.expected_trusted:
            return
        announced = header.images_in_acquisition
        if announced is None or announced < 1:
            item.expected_trusted = False
            item.expected = None
            return
        key = (announced, header.acquisition_number)
        if item.expected_key is None:
            item.expected_key = key
            item.expected = announced
        elif item.expected_key != key:
            item.expected_trusted = False
            item.expected = None
            return
        if item.count > announced:
            item.expected_trusted = False
            item.expected = None

    def restore(self, series: Series) -> None:
        """Track a series left open in the database (after a restart): the quiet period runs from its last
        instance."""
        with self._lock:
            self._series[series.series_instance_uid] = _Tracked(
                series.study_instance_uid,
                series.last_received_at,
                series.instance_count,
                expected_trusted=False,
            )

    def association_ended(self, association_id: int, released: bool) -> None:
        """An association was released (``released``) or aborted."""
        with self._lock:
            for item in self._series.values():
                if association_id in item.open_associations:
                    item.open_associations.discard(association_id)
                    if released:
                        item.released_associations.add(association_id)

    def put_back(self, ready: ReadySeries) -> None:
        """Track a series again whose completion could not be recorded, unless an instance re-opened it."""
        with self._lock:
            if ready.series_instance_uid not in self._series:
                self._series[ready.series_instance_uid] = _Tracked(
                    ready.study_instance_uid, self.clock(), ready.instance_count, fired=ready.rule
                )

    def _rule(self, item: _Tracked, now: datetime) -> str | None:
        if item.fired is not None:
            return item.fired
        trusted = self.policy.use_expected_count and item.expected_trusted and item.expected is not None
        if trusted and item.expected is not None and item.count >= item.expected:
            return "expected_count"
        if (
            self.policy.on_association_release
            and item.released_associations
            and not item.open_associations
            and not (trusted and item.expected is not None and item.count < item.expected)
        ):
            return "association_release"
        quiet = self.policy.quiet_period_s
        if quiet is not None and now - item.last_at >= timedelta(seconds=quiet):
            return "quiet_period"
        return None

    def pop_ready(self, now: datetime | None = None) -> list[ReadySeries]:
        """Remove and return the series whose completion rule fires at ``now`` (default: the clock)."""
        now = self.clock() if now is None else now
        ready: list[ReadySeries] = []
        with self._lock:
            for uid, item in list(self._series.items()):
                rule = self._rule(item, now)
                if rule is not None:
                    del self._series[uid]
                    local = frozenset(item.open_associations | item.released_associations)
                    ready.append(ReadySeries(uid, item.study_instance_uid, rule, item.count, local))
        return ready


class SeriesCompleter:
    """Marks ready series complete and creates their ``queued`` job, in one transaction each."""

    def __init__(
        self, tracker: CompletionTracker, audit: AuditLog, jobs: JobStore, metrics: NodeMetrics | None = None
    ) -> None:
        self.tracker = tracker
        self.audit = audit
        self.jobs = jobs
        self.metrics = metrics or NodeMetrics()

    def still_ready(self, session: Session, series: Series, ready: ReadySeries) -> bool:
        """Whether the locked series row confirms the rule that fired (one process: always)."""
        return True

    def restore_open_series(self) -> int:
        series = self.audit.open_series()
        for item in series:
            self.tracker.restore(item)
        return len(series)

    def run_once(self, now: datetime | None = None) -> list[JobInfo]:
        created: list[JobInfo] = []
        pending = self.tracker.pop_ready(now)
        for index, ready in enumerate(pending):
            try:
                job = self._complete(ready)
            except SQLAlchemyError:
                for unrecorded in pending[index:]:
                    self.tracker.put_back(unrecorded)
                raise
            if job is not None:
                created.append(job)
        return created

    def _complete(self, ready: ReadySeries) -> JobInfo | None:
        with self.audit.db.write() as session:
            series = session.get_one(Series, ready.series_instance_uid, with_for_update=True)
            if series.state == SeriesState.complete.value or not self.still_ready(session, series, ready):
                return None
            series.state = SeriesState.complete.value
            series.completed_at = self.audit.clock()
            waited_s = (series.completed_at - series.first_received_at).total_seconds()
            series.completed_by = ready.rule
            series.expected_count = (
                ready.instance_count if ready.rule == "expected_count" else series.expected_count
            )
            self.audit.add_event(
                session,
                "series_complete",
                "success",
                ready.rule,
                study=ready.study_instance_uid,
                series=ready.series_instance_uid,
                detail=f"{series.instance_count} instances",
            )
            job = self.jobs.create_in(
                session,
                ready.series_instance_uid,
                ready.study_instance_uid,
                f"series complete ({ready.rule})",
            )
        self.metrics.stage_finished("completion", waited_s)
        return job


class CompletionTimer(threading.Thread):
    """Polls the completer every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(
        self,
        completer: SeriesCompleter,
        interval_s: float = 0.5,
        also: Sequence[Callable[[], object]] = (),
    ) -> None:
        super().__init__(name="segnode-completion", daemon=True)
        self.completer = completer
        self.interval_s = interval_s
        #: Other periodic checks run at each tick (ending dropped associations).
        self.also = tuple(also)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                for check in self.also:
                    check()
                self.completer.run_once()
            except SQLAlchemyError:
                LOG.exception("series completion failed; retrying at the next tick")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
