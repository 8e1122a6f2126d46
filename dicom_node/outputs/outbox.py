"""Sending a job's results: one persisted delivery per destination, attempts with back-off, job settlement.

After encoding, :func:`open_deliveries` creates a ``pending`` delivery per destination and output kind
(``seg``, ``sr``, ``overlay``, ``rtstruct``) of the job's objects and moves the job to ``sending``; each
kind is sent on its own association, so a destination that refuses one kind (e.g. no RT Structure Set
Storage) receives the others, and only the failed kind is tried again (``segnode jobs retry``).
:func:`attempt_delivery` sends the destination's objects of the delivery's kind from the job's outbox
folder with ``dicom_node.outputs.sender.send_datasets`` and records the attempt on the delivery
row
(attempt count, first/last attempt time, outcome, the peer's statuses, a warning status) and as a
``send_attempt`` audit event; a failed attempt gets its next attempt time from the destination's retry
policy, or the delivery ``failed`` when the policy is exhausted or the failure is permanent.
:func:`settle_job` ends the job: ``done`` when every delivery is delivered, ``failed`` (stage ``sending``,
reason = the outcome code of the failed delivery) when none is pending any more and one failed.
All state is in the database, so retries continue after a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from sqlalchemy import select

from config.routing import DestinationConfig, SendingConfig
from dicom_node.audit.tables import Delivery, Job
from dicom_node.jobs.context import PipelineContext, PipelineError
from dicom_node.jobs.records import SegOutput, derived_outputs, seg_outputs
from dicom_node.jobs.store import JobState, StageTimer
from dicom_node.outputs.sender import SendResult, decide_retry, retry_policy, send_datasets

logger = logging.getLogger(__name__)

#: Delivery states.
PENDING, DELIVERED, FAILED, CANCELLED = "pending", "delivered", "failed", "cancelled"
#: The kind of a SEG delivery (the others: ``OutputKind`` sr, overlay, rtstruct).
SEG_KIND = "seg"

SendFunction = Callable[[Sequence[Dataset], str, DestinationConfig, SendingConfig], SendResult]


@dataclass(frozen=True)
class DeliveryInfo:
    """A snapshot of a delivery row."""

    id: int
    job_id: int
    destination: str
    kind: str
    state: str
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    last_outcome: str | None
    last_status: str | None
    warning: str | None

    @classmethod
    def of(cls, row: Delivery) -> DeliveryInfo:
        return cls(
            id=row.id,
            job_id=row.job_id,
            destination=row.destination,
            kind=row.kind,
            state=row.state,
            attempts=row.attempts,
            first_attempt_at=row.first_attempt_at,
            last_attempt_at=row.last_attempt_at,
            next_attempt_at=row.next_attempt_at,
            last_outcome=row.last_outcome,
            last_status=row.last_status,
            warning=row.warning,
        )


def open_deliveries(
    ctx: PipelineContext,
    job_id: int,
    outputs: Sequence[SegOutput],
    *,
    holder: str | None = None,
    dispatched: bool = False,
) -> list[str]:
    """Create (or reset, when encoding ran again) a pending delivery per destination and kind of the SEG
    ``outputs`` and of the derived objects the job records (``Job.outputs['derived']``; a kind that could
    not be made gets a failed delivery with its reason), and move the job to ``sending``; delivered ones
    stay delivered. Returns the destination names. A job without outputs goes straight to ``done``.
    ``holder``, ``dispatched``: the cluster worker's lease and hand-over (``JobStore.transition``)."""
    derived = derived_outputs(ctx.jobs, job_id)
    pairs = [(name, SEG_KIND) for output in outputs for name in output.destinations]
    pairs += [(name, o.kind) for o in derived for name in o.destinations]
    pairs = list(dict.fromkeys(pairs))
    names = list(dict.fromkeys(name for name, _ in pairs))
    # a kind that could not be made: its deliveries fail with the encoder's reason, the others go on
    unmade = {
        (name, o.kind): (o.reason or "output_encoding_failed", o.error or "")
        for o in derived
        if o.error is not None
        for name in o.destinations
    }
    now = ctx.now()
    with ctx.db.write() as session:
        existing = {
            (d.destination, d.kind): d
            for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id))
        }
        for name, kind in pairs:
            row = existing.get((name, kind))
            if row is None:
                row = Delivery(job_id=job_id, destination=name, kind=kind, state=PENDING, attempts=0)
                session.add(row)
            elif row.state == DELIVERED:
                continue
            row.state, row.next_attempt_at = PENDING, now
            if (name, kind) in unmade:
                row.state, row.next_attempt_at = FAILED, None
                row.last_outcome, row.last_status = unmade[name, kind]
    ctx.jobs.transition(
        job_id,
        JobState.sending,
        detail=f"to {', '.join(names)}" if names else None,
        holder=holder,
        dispatched=dispatched and bool(names),
    )
    if not names:
        ctx.jobs.transition(
            job_id, JobState.done, reason="empty_segmentation", detail="no structure found; nothing to send"
        )
    return names


def deliveries_of(ctx: PipelineContext, job_id: int) -> list[DeliveryInfo]:
    """The job's deliveries (one per destination and kind) in the order they were created."""
    with ctx.db.read() as session:
        rows = session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id))
        return [DeliveryInfo.of(r) for r in rows]


def due_deliveries(ctx: PipelineContext, now: datetime | None = None) -> list[int]:
    """Pending deliveries of jobs in ``sending`` whose next attempt time has come, oldest job first."""
    now = ctx.now() if now is None else now
    with ctx.db.read() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.next_attempt_at)
            .join(Job, Job.id == Delivery.job_id)
            .where(Delivery.state == PENDING, Job.state == JobState.sending.value)
            .order_by(Delivery.job_id, Delivery.id)
        )
        return [r.id for r in rows if r.next_attempt_at is None or r.next_attempt_at <= now]


def next_due_at(ctx: PipelineContext) -> datetime | None:
    """The earliest next attempt time of a pending delivery (for the sender's sleep)."""
    with ctx.db.read() as session:
        rows = session.scalars(
            select(Delivery.next_attempt_at)
            .join(Job, Job.id == Delivery.job_id)
            .where(Delivery.state == PENDING, Job.state == JobState.sending.value)
        )
        times = [t for t in rows if t is not None]
    return min(times) if times else None


def routed_kinds(ctx: PipelineContext, job_id: int) -> dict[str, list[str]]:
    """Destination -> the kinds of objects the job encoded for it (``seg`` first)."""
    out: dict[str, list[str]] = {}
    for output in seg_outputs(ctx.jobs, job_id):
        for name in output.destinations:
            out.setdefault(name, [SEG_KIND])
    for derived in derived_outputs(ctx.jobs, job_id):
        for name in derived.destinations:
            kinds = out.setdefault(name, [])
            if derived.kind not in kinds:
                kinds.append(derived.kind)
    return out


def outbox_files(ctx: PipelineContext, job_id: int, destination: str, kind: str) -> list[str]:
    """The outbox files of ``kind`` that go to ``destination``."""
    if kind == SEG_KIND:
        return [o.file for o in seg_outputs(ctx.jobs, job_id) if destination in o.destinations]
    return [
        name
        for o in derived_outputs(ctx.jobs, job_id)
        if o.kind == kind and destination in o.destinations
        for name in o.files
    ]


def _datasets(ctx: PipelineContext, job_id: int, destination: str, kind: str = SEG_KIND) -> list[Dataset]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out: list[Dataset] = []
    what = "SEG" if kind == SEG_KIND else kind
    for name in outbox_files(ctx, job_id, destination, kind):
        path = ctx.outbox_dir(job_id) / name
        try:
            out.append(pydicom.dcmread(path))
        except FileNotFoundError as exc:
            raise PipelineError(
                f"job {job_id}: {what} file {name} is no longer in the outbox (removed outside SegNode): "
                "send the series again to make it anew",
                reason="outbox_file_missing",
            ) from exc
        except (InvalidDicomError, OSError) as exc:
            raise PipelineError(
                f"job {job_id}: {what} file {name} in the outbox cannot be read ({type(exc).__name__}): "
                "send the series again to make it anew",
                reason="outbox_file_unreadable",
            ) from exc
    return out


def delivery_label(destination: str, kind: str) -> str:
    """How a delivery is named in messages: the destination, and the kind unless it is the SEG."""
    return destination if kind == SEG_KIND else f"{destination} ({kind})"


def first_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0]


def _statuses(result: SendResult) -> str:
    lines = [result.detail]
    lines += [f"{i.sop_instance_uid}: {i.detail}" for i in result.instances if i.detail != result.detail]
    return "\n".join(lines)[:4000]


def attempt_delivery(
    ctx: PipelineContext, delivery_id: int, send: SendFunction = send_datasets
) -> DeliveryInfo:
    """Make one attempt of a pending delivery and record it (row + ``send_attempt`` audit event)."""
    with ctx.db.read() as session:
        row = session.get_one(Delivery, delivery_id)
        job = session.get_one(Job, row.job_id)
        job_id, name, kind, study, series = (
            row.job_id,
            row.destination,
            row.kind,
            job.study_instance_uid,
            job.series_instance_uid,
        )
    destination = ctx.config.destinations.get(name)
    result: SendResult | None = None
    permanent: tuple[str, str] | None = None
    if destination is None:
        permanent = ("destination_unknown", f"destination {name!r} is no longer in the configuration")
    else:
        try:
            datasets = _datasets(ctx, job_id, name, kind)
        except PipelineError as exc:
            permanent = (exc.reason, exc.message)
        else:
            result = send(datasets, name, destination, ctx.config.sending)
            ctx.failpoints.pause("sending", job_id)
    now = ctx.now()
    with ctx.db.write() as session:
        row = session.get_one(Delivery, delivery_id)
        row.attempts += 1
        row.first_attempt_at = row.first_attempt_at or now
        row.last_attempt_at = now
        if result is None:
            assert permanent is not None
            row.last_outcome, row.last_status = permanent
            row.state, row.next_attempt_at = FAILED, None
        else:
            row.last_outcome = str(result.outcome)
            row.last_status = _statuses(result)
            if result.delivered:
                row.state, row.next_attempt_at = DELIVERED, None
                warned = result.warnings
                row.warning = "\n".join(f"{w.sop_instance_uid}: {w.detail}" for w in warned)[:4000] or None
            else:
                assert destination is not None
                policy = retry_policy(destination, ctx.config.sending)
                first = row.first_attempt_at
                nxt = decide_retry(result, policy, row.attempts, first, now)
                row.state, row.next_attempt_at = (PENDING, nxt) if nxt is not None else (FAILED, None)
        then = (
            f"; next attempt at {row.next_attempt_at.isoformat(timespec='seconds')}"
            if row.state == PENDING and row.next_attempt_at
            else ("; giving up" if row.state == FAILED else "")
        )
        label = delivery_label(name, kind)
        ctx.audit.add_event(
            session,
            "send_attempt",
            "success" if row.state == DELIVERED else "failure",
            row.last_outcome,
            job_id=job_id,
            study=study,
            series=series,
            detail=f"{label}: attempt {row.attempts}: {first_line(row.last_status)}{then}"[:4000],
        )
        info = DeliveryInfo.of(row)
    ctx.metrics.send_attempt(name, info.last_outcome or "", (info.last_status or "").split("\n", 1)[0])
    log = logger.info if info.state == DELIVERED else logger.warning
    log(
        "job %d: delivery of %s to %s attempt %d: %s (%s)",
        job_id,
        kind,
        name,
        info.attempts,
        info.last_outcome,
        info.state,
    )
    return info


def settle_job(ctx: PipelineContext, job_id: int) -> JobState | None:
    """End a job in ``sending`` whose deliveries are all settled; returns the new state (None: unchanged)."""
    deliveries = deliveries_of(ctx, job_id)
    with ctx.db.read() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.sending.value:
            return None
    if any(d.state == PENDING for d in deliveries):
        return None
    _record_sending_timing(ctx, job_id, deliveries)
    failed = [d for d in deliveries if d.state == FAILED]
    if failed:
        first = failed[0]
        detail = "; ".join(
            f"{delivery_label(d.destination, d.kind)}: {first_line(d.last_status)}" for d in failed
        )
        ctx.jobs.transition(
            job_id,
            JobState.failed,
            reason=first.last_outcome or "send_failed",
            detail=f"{len(failed)} of {len(deliveries)} delivery(ies) failed after retries: {detail}"[:2000],
        )
        return JobState.failed
    names = ", ".join(dict.fromkeys(d.destination for d in deliveries))
    ctx.jobs.transition(job_id, JobState.done, detail=f"delivered to {names}" if names else None)
    return JobState.done


def _record_sending_timing(ctx: PipelineContext, job_id: int, deliveries: Sequence[DeliveryInfo]) -> None:
    """The sending stage in the job's stage timings: first attempt to last attempt over all destinations."""
    firsts = [d.first_attempt_at for d in deliveries if d.first_attempt_at is not None]
    lasts = [d.last_attempt_at for d in deliveries if d.last_attempt_at is not None]
    if not firsts or not lasts:
        return
    timer = StageTimer("sending", min(firsts), 0.0, {"attempts": sum(d.attempts for d in deliveries)})
    ok = not any(d.state == FAILED for d in deliveries)
    ctx.jobs.record_stage_timing(
        job_id, timer, (max(lasts) - min(firsts)).total_seconds(), ok=ok, ended_at=max(lasts)
    )


def jobs_to_settle(ctx: PipelineContext) -> list[int]:
    """Jobs in ``sending`` without a pending delivery (e.g. after a restart between attempt and settle)."""
    with ctx.db.read() as session:
        sending = list(session.scalars(select(Job.id).where(Job.state == JobState.sending.value)))
        pending = set(
            session.scalars(
                select(Delivery.job_id).where(Delivery.state == PENDING, Delivery.job_id.in_(sending))
            )
        )
    return [j for j in sending if j not in pending]


def retry_deliveries(ctx: PipelineContext, job_id: int) -> list[str]:
    """Make the failed (or waiting) deliveries of a job pending again with a fresh attempt budget, due now;
    the delivered ones (other kinds, other destinations) are left alone. Returns the destination of each
    (``destination (kind)`` for the objects beside the SEG)."""
    now = ctx.now()
    names = []
    with ctx.db.write() as session:
        for row in session.scalars(select(Delivery).where(Delivery.job_id == job_id)):
            if row.state in (FAILED, PENDING):
                row.state = PENDING
                row.attempts = 0
                row.first_attempt_at = None
                row.next_attempt_at = now
                names.append(delivery_label(row.destination, row.kind))
    return names


def reopen_deliveries(
    ctx: PipelineContext, job_id: int, destinations: Sequence[str], kinds: Sequence[str] = ()
) -> None:
    """Make the deliveries of a job to ``destinations`` (of ``kinds``; none given: every kind) pending
    again, due now, with a fresh budget (delivered ones included: sending the same objects again)."""
    now = ctx.now()
    with ctx.db.write() as session:
        for row in session.scalars(select(Delivery).where(Delivery.job_id == job_id)):
            if row.destination in destinations and (not kinds or row.kind in kinds):
                row.state = PENDING
                row.attempts = 0
                row.first_attempt_at = None
                row.next_attempt_at = now


def cancel_deliveries(ctx: PipelineContext, job_id: int) -> int:
    """Cancel the job's pending deliveries (an operator gave the job up); returns how many."""
    with ctx.db.write() as session:
        rows = list(
            session.scalars(select(Delivery).where(Delivery.job_id == job_id, Delivery.state == PENDING))
        )
        for row in rows:
            row.state = CANCELLED
            row.next_attempt_at = None
        return len(rows)
