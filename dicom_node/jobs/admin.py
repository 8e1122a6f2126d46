"""What an operator does with jobs (``segnode jobs``, the HTTP API and dashboard): retry, resend or cancel
them (what they look at is in ``dicom_node.jobs.queries``).

These functions only change the database; a running node picks the change up at its next poll (the
dispatcher for jobs resumed at a processing stage, the sender for deliveries due again).
"""

from __future__ import annotations

from collections.abc import Sequence

from config.errors import SegNodeError
from dicom_node.audit.tables import Job
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.records import derived_outputs
from dicom_node.jobs.store import JobState
from dicom_node.outputs.outbox import (
    cancel_deliveries,
    outbox_files,
    reopen_deliveries,
    retry_deliveries,
    routed_kinds,
)


class JobActionError(SegNodeError):
    """The job is not in a state where the action applies."""

    reason = "job_action_refused"


def retry_job(ctx: PipelineContext, job_id: int) -> str:
    """Retry a failed job at the stage that failed (sending: every failed delivery again, with a fresh
    retry budget; when a kind could not be made, the job is encoded again first), or make the waiting
    deliveries of a job in ``sending`` due now. Returns what was done."""
    info = ctx.jobs.get(job_id)
    if info.state is JobState.failed:
        stage = info.failed_stage or JobState.queued
        if stage is JobState.sending:
            unmade = unmade_kinds(ctx, job_id)
            names = retry_deliveries(ctx, job_id)
            if unmade:
                # what could not be made is made again: the job is encoded anew (same UIDs), then what
                # is not delivered yet is sent
                ctx.jobs.transition(job_id, JobState.encoding, detail=f"retry requested: {', '.join(unmade)}")
                return f"job {job_id}: encoding {', '.join(unmade)} again, then sending to {', '.join(names)}"
            ctx.jobs.transition(job_id, JobState.sending, detail="retry requested")
            return f"job {job_id}: sending again to {', '.join(names) or 'no destination'}"
        if stage is JobState.converting:
            stage = JobState.queued if _not_routed(ctx, job_id) else JobState.converting
        ctx.jobs.transition(job_id, stage, detail="retry requested")
        return f"job {job_id}: resumes at {stage}"
    if info.state is JobState.sending:
        names = retry_deliveries(ctx, job_id)
        ctx.audit.event(
            "job_retry", "info", "retry requested", job_id=job_id, detail=f"deliveries due now: {names}"
        )
        return f"job {job_id}: waiting deliveries due now ({', '.join(names) or 'none'})"
    raise JobActionError(
        f"job {job_id} is {info.state}; only a failed job, or one waiting to resend, can be retried",
        reason="not_retryable",
    )


def unmade_kinds(ctx: PipelineContext, job_id: int) -> list[str]:
    """The kinds the job's encoding could not make (``Job.outputs['derived']`` with an error)."""
    return list(dict.fromkeys(o.kind for o in derived_outputs(ctx.jobs, job_id) if o.error is not None))


def resend_job(
    ctx: PipelineContext, job_id: int, destinations: Sequence[str] = (), kinds: Sequence[str] = ()
) -> str:
    """Send the objects of a done job again (all its destinations, or the named ones of them; every kind,
    or the named ones: ``seg``, ``sr``, ``overlay``, ``rtstruct``), e.g. after the PACS lost them. The job
    goes back to ``sending`` and ends ``done`` again once delivered."""
    info = ctx.jobs.get(job_id)
    if info.state is not JobState.done:
        raise JobActionError(
            f"job {job_id} is {info.state}; only a done job can be sent again (use retry for a failed one)",
            reason="not_resendable",
        )
    routed = routed_kinds(ctx, job_id)
    known = list(routed)
    if not known:
        raise JobActionError(
            f"job {job_id} produced no SEG object (nothing was segmented): there is nothing to send",
            reason="nothing_to_send",
        )
    unknown = [name for name in destinations if name not in known]
    if unknown:
        raise JobActionError(
            f"job {job_id} was not routed to {', '.join(unknown)}; its destinations: {', '.join(known)}",
            reason="unknown_destination",
        )
    chosen = [name for name in known if not destinations or name in destinations]
    made = list(dict.fromkeys(kind for name in chosen for kind in routed[name]))
    absent = [kind for kind in kinds if kind not in made]
    if absent:
        raise JobActionError(
            f"job {job_id} made no {', '.join(absent)} for {', '.join(chosen)}; it made: {', '.join(made)}",
            reason="unknown_output_kind",
        )
    missing = [
        name
        for destination in chosen
        for kind in routed[destination]
        if not kinds or kind in kinds
        for name in outbox_files(ctx, job_id, destination, kind)
        if not (ctx.outbox_dir(job_id) / name).is_file()
    ]
    if missing:
        raise JobActionError(
            f"job {job_id}: its object(s) {', '.join(dict.fromkeys(missing))} are no longer in the outbox "
            f"({ctx.outbox_dir(job_id)}; deleted by retention after delivery): send the series to the node "
            "again to segment it anew",
            reason="outbox_purged",
        )
    reopen_deliveries(ctx, job_id, chosen, kinds)
    what = f" ({', '.join(kinds)})" if kinds else ""
    ctx.jobs.transition(
        job_id,
        JobState.sending,
        reason="resend_requested",
        detail=f"sending again to {', '.join(chosen)}{what}",
    )
    return f"job {job_id}: sending again to {', '.join(chosen)}{what}"


def _not_routed(ctx: PipelineContext, job_id: int) -> bool:
    with ctx.db.read() as session:
        return session.get_one(Job, job_id).route is None


def cancel_job(ctx: PipelineContext, job_id: int, reason: str = "cancelled_by_user") -> str:
    """Cancel a job that is not finished; its pending deliveries are cancelled too."""
    info = ctx.jobs.get(job_id)
    if info.state in (JobState.done, JobState.cancelled, JobState.superseded):
        raise JobActionError(
            f"job {job_id} is {info.state}; there is nothing to cancel", reason="not_cancellable"
        )
    ctx.jobs.transition(job_id, JobState.cancelled, reason=reason, detail="cancelled by an operator")
    cancelled = cancel_deliveries(ctx, job_id)
    return f"job {job_id}: cancelled" + (f" ({cancelled} pending deliveries cancelled)" if cancelled else "")
