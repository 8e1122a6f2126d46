"""The pipeline's worker threads: stages overlap, the engine stays warm, receiving is never held up.

::

    dispatcher --conv queue--> conversion thread(s) --seg queue--> segment thread --enc queue--> encode
    thread(s) --> deliveries (database) <-- sender thread

* The **dispatcher** polls the database (``pipeline.poll_interval_s``, or at once when woken) for jobs in
  ``queued``/``converting``/``segmenting``/``encoding`` that this process is not working on: new jobs of
  completed series, jobs left mid-stage by a stop or a crash, jobs retried with ``segnode jobs retry``.
* **Conversion** threads route and convert a ``queued``/``converting`` job, or rebuild the volumes of a job
  resumed at ``segmenting``/``encoding``, and pass it on.
* One **segment** thread owns the :class:`inference.engine.Engine` of the process (built once, warmed up at
  start): while it segments one series, the conversion thread prepares the next and the encode thread
  encodes the previous one.
* **Encode** threads write the SEG objects and open the deliveries; the **sender** thread makes the due
  delivery attempts (the back-off times are in the database) and settles jobs.

Queues are bounded (``pipeline.queue_size``): a busy stage holds the ones before it back, never the SCP,
which only writes to the spool and the database. Stopping leaves every job in its persisted state; the next
start resumes it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from config.errors import SegNodeError
from dicom_node.audit.tables import Job
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.convert import convert_stage, reload_volumes
from dicom_node.jobs.records import Converted
from dicom_node.jobs.segment import EngineLike, WarmUp, segment_stage
from dicom_node.jobs.store import IllegalTransitionError, JobState
from dicom_node.logs import job_context
from dicom_node.outputs.encode import encode_stage
from dicom_node.outputs.outbox import (
    SendFunction,
    attempt_delivery,
    due_deliveries,
    jobs_to_settle,
    next_due_at,
    open_deliveries,
    settle_job,
)
from dicom_node.outputs.sender import send_datasets

logger = logging.getLogger(__name__)

#: States the dispatcher hands to the conversion threads.
_DISPATCHED = (JobState.queued, JobState.converting, JobState.segmenting, JobState.encoding)
_STOP = object()


@dataclass
class _Item:
    job_id: int
    converted: Converted | None = None


class Pipeline:
    """Runs the stages of every job of the node in worker threads (see the module docstring)."""

    def __init__(
        self,
        ctx: PipelineContext,
        engine_factory: Callable[[], EngineLike] | None = None,
        send: SendFunction = send_datasets,
    ) -> None:
        self.ctx = ctx
        self.settings = ctx.config.pipeline
        self._engine_factory = engine_factory or self._default_engine
        self._engine: EngineLike | None = None
        #: loading | loaded | failed (the models of inference.default_task at start) | lazy (no warm-up)
        self.warm_up_state = WarmUp.loading if self.settings.warm_up else WarmUp.lazy
        self.warm_up_error: str | None = None
        self._send = send
        size = self.settings.queue_size
        self._convert_q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._segment_q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._encode_q: queue.Queue[Any] = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._wake_dispatcher = threading.Event()
        self._wake_sender = threading.Event()
        self._claimed: set[int] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _default_engine(self) -> EngineLike:
        from inference.engine import Engine

        return Engine(self.ctx.config.inference)

    # -- life cycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.work_root.mkdir(parents=True, exist_ok=True)
        self.ctx.outbox_root.mkdir(parents=True, exist_ok=True)
        specs: list[tuple[str, Callable[[], None]]] = [("segnode-dispatch", self._dispatch_loop)]
        specs += [
            (f"segnode-convert-{n}", self._convert_loop) for n in range(self.settings.conversion_workers)
        ]
        specs.append(("segnode-segment", self._segment_loop))
        specs += [(f"segnode-encode-{n}", self._encode_loop) for n in range(self.settings.encode_workers)]
        specs.append(("segnode-send", self._send_loop))
        for name, target in specs:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("pipeline started (%d threads)", len(self._threads))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads; work in progress keeps its persisted state and resumes at the next start."""
        self._stop.set()
        self._wake_dispatcher.set()
        self._wake_sender.set()
        for q, count in (
            (self._convert_q, self.settings.conversion_workers),
            (self._segment_q, 1),
            (self._encode_q, self.settings.encode_workers),
        ):
            for _ in range(count):
                try:
                    q.put_nowait(_STOP)
                except queue.Full:
                    pass  # the thread sees the stop event at its next get timeout
        for thread in self._threads:
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                logger.warning("%s still busy at stop; its job resumes at the next start", thread.name)
        self._threads.clear()

    def wake(self) -> None:
        """Look for new work now (a job was created or retried)."""
        self._wake_dispatcher.set()
        self._wake_sender.set()

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting in this process between the stages, by the stage they wait for (for /metrics)."""
        return {
            "converting": self._convert_q.qsize(),
            "segmenting": self._segment_q.qsize(),
            "encoding": self._encode_q.qsize(),
        }

    @property
    def loaded_engine(self) -> EngineLike | None:
        """The engine if it has been built (never builds it)."""
        return self._engine

    @property
    def engine(self) -> EngineLike:
        if self._engine is None:
            self._engine = self._engine_factory()
        return self._engine

    # -- helpers -----------------------------------------------------------------------------------------

    def _release(self, job_id: int) -> None:
        with self._lock:
            self._claimed.discard(job_id)

    def _put(self, q: queue.Queue[Any], item: _Item) -> bool:
        """Put with back-pressure; False when stopping."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue[Any]) -> _Item | None:
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                continue
            return None if item is _STOP else item
        return None

    def _state(self, job_id: int) -> JobState | None:
        with self.ctx.db.read() as session:
            job = session.get(Job, job_id)
            return None if job is None else JobState(job.state)

    def _run(self, item: _Item, work: Callable[[_Item], bool]) -> None:
        """Run ``work``; on failure record it on the job; release the job unless ``work`` passed it on."""
        passed_on = False
        with job_context(item.job_id):
            try:
                passed_on = work(item)
            except IllegalTransitionError as exc:
                logger.info("job %d changed meanwhile (cancelled or superseded): %s", item.job_id, exc)
            except SegNodeError as exc:
                self._fail(item.job_id, exc)
            except SQLAlchemyError:
                logger.exception("job %d: database error; the job resumes at the next poll", item.job_id)
            except Exception as exc:  # an unexpected error fails the job with its message
                logger.exception("job %d: unexpected error", item.job_id)
                self._fail(item.job_id, exc)
            finally:
                if not passed_on:
                    self._release(item.job_id)

    def _fail(self, job_id: int, exc: BaseException) -> None:
        try:
            self.ctx.jobs.fail(job_id, exc)
        except IllegalTransitionError as again:
            logger.info("job %d not failed, it changed meanwhile: %s", job_id, again)

    # -- loops -------------------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch_once()
            except SQLAlchemyError:
                logger.exception("dispatcher: database error; retrying at the next poll")
            self._wake_dispatcher.wait(self.settings.poll_interval_s)
            self._wake_dispatcher.clear()

    def _dispatch_once(self) -> None:
        with self.ctx.db.read() as session:
            ids = list(
                session.scalars(
                    select(Job.id).where(Job.state.in_([s.value for s in _DISPATCHED])).order_by(Job.id)
                )
            )
        for job_id in ids:
            with self._lock:
                if job_id in self._claimed:
                    continue
                self._claimed.add(job_id)
            try:
                self._convert_q.put_nowait(_Item(job_id))
            except queue.Full:
                self._release(job_id)
                return

    def _convert_loop(self) -> None:
        while (item := self._get(self._convert_q)) is not None:
            self._run(item, self._convert)

    def _convert(self, item: _Item) -> bool:
        state = self._state(item.job_id)
        if state is JobState.queued:
            self.ctx.jobs.transition(item.job_id, JobState.converting)
            state = JobState.converting
        if state is JobState.converting:
            with self.ctx.jobs.timed_stage(item.job_id, "converting") as timer:
                converted = convert_stage(self.ctx, item.job_id)
                if converted is not None:
                    timer.extra["stacks"] = len(converted.volumes)
                    timer.extra["route"] = converted.plan.route
            if converted is None:  # ignored by the route: cancelled
                self.wake()  # a fan-out may have created jobs
                return False
            self.wake()
            self.ctx.jobs.transition(item.job_id, JobState.segmenting)
            item.converted = converted
            return self._put(self._segment_q, item)
        if state in (JobState.segmenting, JobState.encoding):
            logger.info("job %d resumes at %s; rebuilding its volumes from the spool", item.job_id, state)
            item.converted = reload_volumes(self.ctx, item.job_id)
            return self._put(self._segment_q if state is JobState.segmenting else self._encode_q, item)
        return False  # done, failed, cancelled or superseded meanwhile

    def _segment_loop(self) -> None:
        if self.settings.warm_up:
            self._warm_up()
        while (item := self._get(self._segment_q)) is not None:
            self._run(item, self._segment)

    def _warm_up(self) -> None:
        task = self.ctx.config.inference.default_task
        warm_up = getattr(self.engine, "warm_up", None)
        if warm_up is None:
            self.warm_up_state = WarmUp.loaded
            return
        try:
            warm_up(task)
        except SegNodeError as exc:
            logger.warning("models of task %s not loaded at start: [%s] %s", task, exc.reason, exc.message)
            self.warm_up_state, self.warm_up_error = WarmUp.failed, f"[{exc.reason}] {exc.message}"
            return
        self.warm_up_state = WarmUp.loaded

    def _segment(self, item: _Item) -> bool:
        if self._state(item.job_id) is not JobState.segmenting or item.converted is None:
            return False
        with self.ctx.jobs.timed_stage(item.job_id, "segmenting") as timer:
            records = segment_stage(self.ctx, item.converted, self.engine)
            timer.extra["inference_s"] = round(sum(r.timings.get("total", 0.0) for r in records), 4)
            timer.extra["device"] = ", ".join(sorted({r.device for r in records}))
        self.ctx.jobs.transition(item.job_id, JobState.encoding)
        return self._put(self._encode_q, item)

    def _encode_loop(self) -> None:
        while (item := self._get(self._encode_q)) is not None:
            self._run(item, self._encode)

    def _encode(self, item: _Item) -> bool:
        if self._state(item.job_id) is not JobState.encoding or item.converted is None:
            return False
        with self.ctx.jobs.timed_stage(item.job_id, "encoding") as timer:
            outputs = encode_stage(self.ctx, item.converted)
            timer.extra["seg_objects"] = len(outputs)
            timer.extra["validation_s"] = round(sum(o.validation_s for o in outputs), 4)
        open_deliveries(self.ctx, item.job_id, outputs)
        self._wake_sender.set()
        return False

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._send_once()
                wait = self._sleep_s()
            except SQLAlchemyError:
                logger.exception("sender: database error; retrying at the next poll")
                wait = self.settings.poll_interval_s
            self._wake_sender.wait(wait)
            self._wake_sender.clear()

    def _sleep_s(self) -> float:
        due = next_due_at(self.ctx)
        if due is None:
            return self.settings.poll_interval_s
        seconds = (due - self.ctx.now()).total_seconds()
        return max(0.0, min(seconds, self.settings.poll_interval_s))

    def _send_once(self, now: datetime | None = None) -> int:
        attempts = 0
        touched: set[int] = set()
        for delivery_id in due_deliveries(self.ctx, now):
            if self._stop.is_set():
                break
            try:
                info = attempt_delivery(self.ctx, delivery_id, self._send)
            except SQLAlchemyError:
                raise
            except Exception:  # a bug must not stop the sender thread; the delivery is tried again later
                logger.exception("delivery %d: unexpected error during the attempt", delivery_id)
                continue
            attempts += 1
            touched.add(info.job_id)
        for job_id in sorted(touched | set(jobs_to_settle(self.ctx))):
            with job_context(job_id):
                try:
                    settle_job(self.ctx, job_id)
                except IllegalTransitionError as exc:
                    logger.info("job %d changed meanwhile: %s", job_id, exc)
        return attempts
