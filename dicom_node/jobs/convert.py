"""The converting stage: a job's series is routed on its first run (the rule name is stored on the job;
further matching rules of a fan-out get their own job, an ``ignore`` ends the job as cancelled with reason
``route_ignore``), its instances are read from the spool and the stacks the route selects are built.
Volumes stay in memory; after a restart they are built again from the spool (:func:`reload_volumes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select

from config.routing import RouteAction
from conversion.headers import SourceImage
from conversion.volume import Volume
from dicom_node.audit.tables import Association, Event, Instance
from dicom_node.jobs.context import PipelineContext, PipelineError
from dicom_node.jobs.records import Converted, JobPlan
from dicom_node.jobs.routing import DEFAULT_ROUTE_NAME, SeriesFacts, route_series, select_stacks
from dicom_node.jobs.store import JobInfo, JobState

logger = logging.getLogger(__name__)


@dataclass
class SeriesInput:
    """The stored instances of a job's series (spool files), and the AE titles they arrived with."""

    paths: list[Path]
    called_ae_title: str
    calling_ae_title: str
    _sources: list[SourceImage] | None = field(default=None, init=False, repr=False)

    def sources(self) -> list[SourceImage]:
        """The files' headers, each read once for routing and conversion (``NotSegmentableError``
        ``unreadable`` for a file that is not DICOM)."""
        from conversion.headers import read_sources

        if self._sources is None:
            self._sources = read_sources(list(self.paths))
        return self._sources

    def headers(self) -> list[Dataset]:
        """The instances' complete headers without pixel data (what routing looks at)."""
        from conversion.errors import NotSegmentableError

        try:
            return [source.header for source in self.sources()]
        except NotSegmentableError as exc:
            raise PipelineError(
                f"{exc.message}; the stored instance is damaged: send the series again",
                reason="spool_file_unreadable",
            ) from exc


def read_series(ctx: PipelineContext, job: JobInfo) -> SeriesInput:
    """The spool files of the job's series (checked to exist; they are read by the conversion, which reads
    each header once and decodes the pixels straight into the volumes)."""
    with ctx.db.read() as session:
        rows = list(
            session.execute(
                select(Instance.spool_path, Instance.received_at, Instance.association_id)
                .where(Instance.series_instance_uid == job.series_instance_uid)
                .order_by(Instance.received_at, Instance.sop_instance_uid)
            )
        )
        last_association = next((r.association_id for r in reversed(rows) if r.association_id), None)
        called = calling = ""
        if last_association is not None:
            assoc = session.get(Association, last_association)
            if assoc is not None:
                called, calling = assoc.called_ae_title, assoc.calling_ae_title
    if not rows:
        raise PipelineError(
            f"series {job.series_instance_uid}: no stored instances in the audit database",
            reason="no_instances",
        )
    paths = [ctx.spool_root / row.spool_path for row in rows]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        _raise_missing(ctx, job, missing, len(paths))
    return SeriesInput(paths, called, calling)


def _raise_missing(ctx: PipelineContext, job: JobInfo, missing: list[Path], total: int) -> None:
    """Why the job cannot read its series: retention deleted the earlier instances (a late instance re-opened
    a series already delivered or given up), or files vanished from the spool."""
    with ctx.db.read() as session:
        purge = session.scalars(
            select(Event)
            .where(Event.what == "retention_purged", Event.series_instance_uid == job.series_instance_uid)
            .order_by(Event.id.desc())
        ).first()
    if purge is not None:
        raise PipelineError(
            f"series {job.series_instance_uid}: {len(missing)} of its {total} instance(s) were deleted by "
            f"retention on {purge.at:%Y-%m-%d %H:%M} UTC ({purge.reason}); the instance(s) received since "
            "cannot be segmented without them: send the complete series again",
            reason="spool_purged",
        )
    # Spool files are named after their SOP Instance UID; their folders are internal and not shown.
    raise PipelineError(
        f"series {job.series_instance_uid}: {len(missing)} of its {total} stored instance(s) are no longer "
        f"in the spool (first: instance {missing[0].stem}), removed outside SegNode: send the series again",
        reason="spool_file_missing",
    )


def action_of(ctx: PipelineContext, route: str) -> RouteAction:
    """The action of a route by name (the configuration may have changed since the job was routed)."""
    if route == DEFAULT_ROUTE_NAME:
        return ctx.config.default_route
    for rule in ctx.config.routes:
        if rule.name == route:
            return rule.action
    raise PipelineError(
        f"route {route!r} of the job is no longer in the configuration (routes: "
        f"{', '.join(r.name for r in ctx.config.routes) or 'none'})",
        reason="route_missing",
    )


def route_job(ctx: PipelineContext, job: JobInfo, series: SeriesInput) -> JobPlan | None:
    """Route a job's series: the job takes the first matching action; each further action of a fan-out
    becomes a new ``queued`` job of the same series; an ``ignore`` cancels the job (reason ``route_ignore``).
    """
    facts = SeriesFacts.from_headers(series.headers(), series.called_ae_title, series.calling_ae_title)
    decision = route_series(facts, ctx.config.routes, ctx.config.default_route)
    explanation = "; ".join(
        f"{ev.name}: {'matched' if ev.matched else 'no match'} ({ev.explain()})"
        for ev in decision.evaluations
        if ev.reached
    )
    if decision.ignored:
        with ctx.db.write() as session:
            ctx.audit.add_event(
                session,
                "series_ignored",
                "info",
                "route_ignore",
                job_id=job.id,
                study=job.study_instance_uid,
                series=job.series_instance_uid,
                detail=f"{decision.summary()}; {explanation}"[:4000],
            )
        ctx.jobs.transition(job.id, JobState.cancelled, reason="route_ignore", detail=decision.summary())
        return None
    first, *others = decision.actions
    ctx.jobs.record_route(
        job.id, first.rule, [a.rule for a in others], f"{decision.summary()}; {explanation}"
    )
    return JobPlan(job.id, job.series_instance_uid, job.study_instance_uid, first.rule, first.action)


def _volumes(ctx: PipelineContext, plan: JobPlan, series: SeriesInput) -> list[Volume]:
    from conversion import load_series

    volumes = load_series(series.sources())
    selected = select_stacks(volumes, plan.action)
    if not selected:
        labels = ", ".join(v.stack_label or f"stack {n + 1}" for n, v in enumerate(volumes))
        raise PipelineError(
            f"series {plan.series_instance_uid}: route {plan.route!r} selects none of its stacks ({labels}); "
            "change the route's stack selection if this series should be segmented",
            reason="no_stack_selected",
        )
    return selected


def convert_stage(ctx: PipelineContext, job_id: int) -> Converted | None:
    """Route (first run only) and convert a job in ``converting``; ``None`` when the route ignores it."""
    ctx.failpoints.pause("converting", job_id)
    job = ctx.jobs.get(job_id)
    series = read_series(ctx, job)
    if job.route is None:
        plan = route_job(ctx, job, series)
        if plan is None:
            return None
    else:
        plan = JobPlan(
            job.id, job.series_instance_uid, job.study_instance_uid, job.route, action_of(ctx, job.route)
        )
    volumes = _volumes(ctx, plan, series)
    logger.info(
        "job %d: %d stack(s) of series %s to segment (route %s)",
        job_id,
        len(volumes),
        plan.series_instance_uid,
        plan.route,
    )
    return Converted(plan, volumes)


def reload_volumes(ctx: PipelineContext, job_id: int) -> Converted:
    """Rebuild the volumes of a routed job from the spool (a job resumed after a restart)."""
    job = ctx.jobs.get(job_id)
    if job.route is None:
        raise PipelineError(f"job {job_id} has not been routed", reason="not_routed")
    plan = JobPlan(
        job.id, job.series_instance_uid, job.study_instance_uid, job.route, action_of(ctx, job.route)
    )
    return Converted(plan, _volumes(ctx, plan, read_series(ctx, job)))
