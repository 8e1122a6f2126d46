"""Series completion decided in the database, for receivers that share one series.

A series may arrive over several receivers (a load balancer in front of them, a PACS that sends in parallel).
Each receiver's :class:`~dicom_node.receiving.completion.CompletionTracker` only knows its own associations
and instances, so its rule is a proposal; the decision is taken in the transaction that locks the series
row (``SELECT ... FOR UPDATE``) and creates the job:

* **association release** holds only when no association of another receiver that delivered instances
  of the series is still open in the database (the proposing receiver's own associations are in the
  proposal: its tracker knows they ended, even before the release is written);
* **quiet period** holds only when the series' last instance, on any receiver, is ``quiet_period_s`` old;
* **expected count** holds as proposed (the count came from the database row).

The row lock makes the decision once: the receiver that comes second finds the series complete and does
nothing. A proposal that does not hold is dropped: the receiver that holds the open association proposes
again when it ends, and every receiver also looks in the database for open series past their quiet period
(a receiver that died leaves its series to the others).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.audit.tables import Association, Instance, Series, SeriesState
from dicom_node.jobs.store import JobInfo
from dicom_node.receiving.completion import ReadySeries, SeriesCompleter

#: Association results that are not over yet.
_OPEN_RESULTS = ("requested", "accepted")


class ClusterCompleter(SeriesCompleter):
    """A :class:`SeriesCompleter` whose proposals are confirmed against the shared database."""

    def still_ready(self, session: Session, series: Series, ready: ReadySeries) -> bool:
        if ready.rule == "association_release":
            others_open = session.scalars(
                select(Association.id)
                .join(Instance, Instance.association_id == Association.id)
                .where(
                    Instance.series_instance_uid == series.series_instance_uid,
                    Association.result.in_(_OPEN_RESULTS),
                    Association.id.not_in(ready.associations or {-1}),
                )
                .limit(1)
            ).first()
            return others_open is None
        if ready.rule == "quiet_period":
            return self._quiet_since(series, self.audit.clock())
        return True

    def _quiet_since(self, series: Series, now: datetime) -> bool:
        quiet = self.tracker.policy.quiet_period_s
        return quiet is not None and now - series.last_received_at >= timedelta(seconds=quiet)

    def run_once(self, now: datetime | None = None) -> list[JobInfo]:
        """Complete what this receiver's tracker proposes, then the open series of any receiver whose quiet
        period is over."""
        created = super().run_once(now)
        quiet = self.tracker.policy.quiet_period_s
        if quiet is None:
            return created
        now = self.audit.clock() if now is None else now
        with self.audit.db.read() as session:
            stale = list(
                session.execute(
                    select(
                        Series.series_instance_uid, Series.study_instance_uid, Series.instance_count
                    ).where(
                        Series.state == SeriesState.open.value,
                        Series.last_received_at <= now - timedelta(seconds=quiet),
                    )
                )
            )
        for uid, study, count in stale:
            job = self._complete(ReadySeries(uid, study, "quiet_period", int(count)))
            if job is not None:
                created.append(job)
        return created
