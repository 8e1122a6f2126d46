"""Notifications of incidents, once per incident, without patient data, rate-limited, retried, audited.

Incidents (``notifications.events``):

* ``job_failed``: a job moved to ``failed`` (after the sender's retries, or a stage that cannot go on) and
  is still failed when the notifier looks; one incident per failure (the audit event of the transition).
* ``destination_unreachable``: a destination has not answered (send attempts, C-ECHO checks) for more than
  ``notifications.destination_down_minutes``; one incident per outage.
* ``spool_low``: the spool's free space is below ``storage.min_free_space_mb``; one incident until it is
  above again.

Each incident becomes one notification per channel (webhook, e-mail). A channel sends at most
``max_per_hour`` an hour; more are recorded as suppressed. A channel that fails is retried with back-off
until ``retry_max_hours``. Every outcome is an audit event (``notification_sent``, ``notification_failed``,
``notification_suppressed``, ``notification_given_up``) whose reason is the incident key, so that a
restarted node does not notify the same incident twice. The payload names the job id, a SHA-256 hash of
the Series Instance UID, the stage and the reason code; never a patient name or ID.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from config.model import SegNodeConfig
from config.notifications import NotificationKind, NotificationsConfig
from dicom_node.audit.log import AuditLog
from dicom_node.audit.tables import Event, Job
from dicom_node.http.channels import Channel, NotificationError, email_channel, webhook_channel
from dicom_node.http.metrics import NodeMetrics

LOG = logging.getLogger(__name__)

#: How far back a starting node looks for job failures it may not have notified yet.
LOOK_BACK = timedelta(hours=24)
_NOTIFICATION_EVENTS = (
    "notification_sent",
    "notification_suppressed",
    "notification_given_up",
)


def series_hash(series_instance_uid: str) -> str:
    """The identifier of a series in notifications: SHA-256 of its UID (first 16 hex digits)."""
    return "sha256:" + hashlib.sha256(series_instance_uid.encode("ascii", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class Notification:
    """One incident, ready to send: ``key`` identifies the incident, ``payload`` is the JSON body."""

    key: str
    kind: NotificationKind
    subject: str
    payload: dict[str, Any]

    def text(self) -> str:
        lines = [self.payload["summary"], ""]
        for name, value in sorted(self.payload.items()):
            if isinstance(value, dict):
                lines += [f"{name}.{k}: {v}" for k, v in sorted(value.items()) if v is not None]
            elif name != "summary" and value is not None:
                lines.append(f"{name}: {value}")
        return "\n".join(lines) + "\n"


@dataclass
class _Pending:
    notification: Notification
    channel: str
    first_at: datetime
    next_at: datetime
    attempts: int = 0


@dataclass
class _ChannelState:
    send: Channel
    sent_at: deque[datetime] = field(default_factory=deque)


def build_channels(config: NotificationsConfig) -> dict[str, Channel]:
    channels: dict[str, Channel] = {f"webhook:{w.name}": webhook_channel(w) for w in config.webhooks}
    if config.email is not None:
        channels["email"] = email_channel(config.email)
    return channels


class Notifier:
    """Finds incidents and sends their notifications; :meth:`run_once` is one look (the thread calls it
    every ``check_interval_s``; tests may call it directly)."""

    def __init__(
        self,
        config: SegNodeConfig,
        audit: AuditLog,
        metrics: NodeMetrics,
        spool_free_bytes: Callable[[], int | None],
        channels: Mapping[str, Channel] | None = None,
    ) -> None:
        self.config = config
        self.settings = config.notifications
        self.audit = audit
        self.metrics = metrics
        self.spool_free_bytes = spool_free_bytes
        chosen = build_channels(self.settings) if channels is None else channels
        self._channels = {name: _ChannelState(send) for name, send in chosen.items()}
        self._pending: list[_Pending] = []
        self._done: set[str] = set()
        self._after_event = 0
        self._spool_low_since: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._node = config.node.ae_titles[0].ae_title

    @property
    def active(self) -> bool:
        return bool(self._channels and self.settings.events)

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._load_history()
        self._thread = threading.Thread(target=self._loop, name="segnode-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.check_interval_s):
            try:
                self.run_once()
            except Exception:  # a bug must not end the notifier; it is logged and runs again
                LOG.exception("notifications: look for incidents failed")

    def _load_history(self) -> None:
        """Incidents already notified (from the audit log) and where to start looking for failures."""
        since = self.audit.clock() - LOOK_BACK
        with self.audit.db.read() as session:
            keys = session.scalars(
                select(Event.reason).where(Event.what.in_(_NOTIFICATION_EVENTS), Event.at >= since)
            )
            self._done = {k for k in keys if k}
            first = session.scalars(select(Event.id).where(Event.at >= since).order_by(Event.id)).first()
        self._after_event = (first or 1) - 1

    # -- one look ----------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Find new incidents, queue them, send what is due; returns how many sends succeeded."""
        if not self.active:
            return 0
        for notification in self.incidents():
            self._queue(notification)
        return self._send_due()

    def incidents(self) -> list[Notification]:
        kinds = set(self.settings.events)
        found: list[Notification] = []
        if NotificationKind.job_failed in kinds:
            found += self._failed_jobs()
        if NotificationKind.destination_unreachable in kinds:
            found += self._unreachable_destinations()
        if NotificationKind.spool_low in kinds:
            found += self._spool_low()
        return [n for n in found if n.key not in self._done]

    def _failed_jobs(self) -> list[Notification]:
        with self.audit.db.read() as session:
            top = session.scalar(select(func.max(Event.id))) or 0
            rows = list(
                session.execute(
                    select(
                        Event.id,
                        Event.job_id,
                        Event.reason,
                        Event.at,
                        Job.state,
                        Job.failed_stage,
                        Job.series_instance_uid,
                    )
                    .join(Job, Job.id == Event.job_id)
                    .where(
                        Event.id > self._after_event,
                        Event.id <= top,
                        Event.what == "job_transition",
                        Event.outcome == "failure",
                    )
                    .order_by(Event.id)
                )
            )
        self._after_event = max(self._after_event, top)
        out = []
        for row in rows:
            if row.state != "failed":  # retried (or resumed) meanwhile: not failed for good
                continue
            job: dict[str, Any] = {
                "id": row.job_id,
                "stage": row.failed_stage,
                "reason": row.reason,
                "series_uid_hash": series_hash(row.series_instance_uid),
            }
            if self.settings.include_uids:
                job["series_instance_uid"] = row.series_instance_uid
            summary = f"Job {row.job_id} failed in {row.failed_stage}: {row.reason}"
            out.append(
                self._notification(
                    f"job_failed:job={row.job_id}:event={row.id}",
                    NotificationKind.job_failed,
                    f"job {row.job_id} failed ({row.failed_stage}: {row.reason})",
                    summary,
                    {"job": job, "at": row.at.isoformat()},
                )
            )
        return out

    def _unreachable_destinations(self) -> list[Notification]:
        now = self.audit.clock()
        limit_s = self.settings.destination_down_minutes * 60
        out = []
        for state in self.metrics.destinations.states():
            down_s = state.down_for_s(now)
            if state.state != "down" or down_s < limit_s or state.since is None:
                continue
            minutes = round(down_s / 60, 1)
            destination = {
                "name": state.name,
                "down_since": state.since.isoformat(),
                "down_minutes": minutes,
                "last_outcome": state.last_outcome,
            }
            out.append(
                self._notification(
                    f"destination_unreachable:{state.name}:{state.since.isoformat()}",
                    NotificationKind.destination_unreachable,
                    f"destination {state.name} unreachable for {minutes:g} min",
                    f"Destination {state.name} has not answered for {minutes:g} minutes "
                    f"({state.last_outcome}); results for it wait and are retried.",
                    {"destination": destination},
                )
            )
        return out

    def _spool_low(self) -> list[Notification]:
        free = self.spool_free_bytes()
        watermark = self.config.storage.min_free_space_mb * 1024 * 1024
        if free is None or free >= watermark:
            self._spool_low_since = None
            return []
        if self._spool_low_since is None:
            self._spool_low_since = self.audit.clock()
        mib = free // (1024 * 1024)
        return [
            self._notification(
                f"spool_low:{self._spool_low_since.isoformat()}",
                NotificationKind.spool_low,
                f"spool space low ({mib} MiB free)",
                f"The spool has {mib} MiB free, below the watermark of "
                f"{self.config.storage.min_free_space_mb} MiB: new instances are refused until space is "
                "freed.",
                {"spool": {"free_bytes": free, "watermark_bytes": watermark}},
            )
        ]

    def _notification(
        self, key: str, kind: NotificationKind, subject: str, summary: str, extra: dict[str, Any]
    ) -> Notification:
        payload: dict[str, Any] = {
            "source": "segnode",
            "node": self._node,
            "event": str(kind),
            "incident": key,
            "summary": summary,
            "notified_at": self.audit.clock().isoformat(),
            **extra,
        }
        base = self.settings.dashboard_url
        if base:
            job = extra.get("job")
            path = f"dashboard/jobs/{job['id']}" if job else "dashboard"
            payload["url"] = base.rstrip("/") + "/" + path
        return Notification(key, kind, f"[SegNode {self._node}] {subject}", payload)

    # -- sending -----------------------------------------------------------------------------------------

    def _queue(self, notification: Notification) -> None:
        self._done.add(notification.key)
        now = self.audit.clock()
        for name, channel in self._channels.items():
            while channel.sent_at and now - channel.sent_at[0] >= timedelta(hours=1):
                channel.sent_at.popleft()
            if len(channel.sent_at) >= self.settings.max_per_hour:
                self._record(notification, name, "notification_suppressed", "info", "rate limit reached")
                self.metrics.notification(name, "suppressed")
                continue
            channel.sent_at.append(now)
            self._pending.append(_Pending(notification, name, now, now))

    def _send_due(self) -> int:
        now = self.audit.clock()
        sent = 0
        for item in [p for p in self._pending if p.next_at <= now]:
            if self._stop.is_set():
                break
            item.attempts += 1
            try:
                self._channels[item.channel].send(
                    item.notification.subject, item.notification.payload, item.notification.text()
                )
            except NotificationError as exc:
                self._failed(item, exc.message)
                continue
            self._pending.remove(item)
            sent += 1
            self.metrics.notification(item.channel, "sent")
            self._record(
                item.notification, item.channel, "notification_sent", "success", f"attempt {item.attempts}"
            )
        return sent

    def _failed(self, item: _Pending, message: str) -> None:
        now = self.audit.clock()
        s = self.settings
        delay = min(s.retry_initial_delay_s * 2 ** (item.attempts - 1), s.retry_max_delay_s)
        item.next_at = now + timedelta(seconds=delay)
        if item.next_at - item.first_at > timedelta(hours=s.retry_max_hours):
            self._pending.remove(item)
            self.metrics.notification(item.channel, "given_up")
            detail = f"attempt {item.attempts}: {message}; given up after {s.retry_max_hours:g} h"
            self._record(item.notification, item.channel, "notification_given_up", "failure", detail)
            return
        self.metrics.notification(item.channel, "retry")
        detail = f"attempt {item.attempts}: {message}; next attempt at {item.next_at.isoformat()}"
        self._record(item.notification, item.channel, "notification_failed", "failure", detail)

    def _record(self, notification: Notification, channel: str, what: str, outcome: str, text: str) -> None:
        job = notification.payload.get("job")
        log = LOG.info if outcome in {"success", "info"} else LOG.warning
        log("notification %s to %s: %s (%s)", notification.key, channel, what, text)
        self.audit.event(
            what,
            outcome,
            notification.key,
            job_id=job["id"] if job else None,
            detail=f"{channel}: {notification.kind}: {text}"[:4000],
        )

    def pending(self) -> int:
        return len(self._pending)
