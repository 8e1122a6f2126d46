"""Cluster leases and dispatch on a frozen clock (SQLite; the row locks are PostgreSQL's, exercised by
tests/cluster): a claim takes a stage once, a redelivered task does nothing, an expired lease is an
interruption, a task the broker lost is dispatched again only while its queue has no busy worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.node import PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.audit.tables import Event, Series
from dicom_node.jobs.leases import JobLeases
from dicom_node.jobs.store import JobState, JobStore, LeaseLostError
from tests.support.node import FrozenClock


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[JobStore, FrozenClock]]:
    clock = FrozenClock()
    db = Database(f"sqlite:///{tmp_path / 'leases.db'}")
    db.upgrade("head")
    store = JobStore(AuditLog(db, "test", PrivacyConfig(), clock))
    with db.write() as session:
        for n in (1, 2):
            session.add(
                Series(
                    series_instance_uid=f"1.2.{n}",
                    study_instance_uid="1.2",
                    state="complete",
                    instance_count=1,
                    first_received_at=clock(),
                    last_received_at=clock(),
                )
            )
    yield store, clock
    db.dispose()


def skipped(store: JobStore, job_id: int) -> list[str]:
    with store.db.read() as session:
        return [
            e.reason or ""
            for e in session.query(Event).filter(Event.job_id == job_id, Event.what == "task_skipped")
        ]


def test_a_stage_is_claimed_once_and_its_redelivered_task_does_nothing(
    store: tuple[JobStore, FrozenClock],
) -> None:
    jobs, clock = store
    leases = JobLeases(jobs)
    job = jobs.create("1.2.1", "1.2", "test")
    first = leases.claim(job.id, "convert", "a:1", 10)
    assert first.refused is None and first.job is not None and first.job.state is JobState.converting
    assert leases.claim(job.id, "convert", "b:2", 10).refused == "stage_held"
    assert leases.claim(job.id, "segment", "b:2", 10).refused == "stage_not_reached"
    with pytest.raises(LeaseLostError):
        jobs.transition(job.id, JobState.segmenting, holder="b:2")
    jobs.transition(job.id, JobState.segmenting, holder="a:1", dispatched=True)
    assert leases.claim(job.id, "convert", "b:2", 10).refused == "stage_committed"
    assert skipped(jobs, job.id) == ["stage_held", "stage_not_reached", "stage_committed"]
    clock.advance(1)
    assert leases.take_due(reconcile_after_s=5) == []  # dispatched a second ago by the worker


def test_an_expired_lease_is_an_interruption_and_the_stage_goes_out_again(
    store: tuple[JobStore, FrozenClock],
) -> None:
    jobs, clock = store
    leases = JobLeases(jobs)
    job = jobs.create("1.2.1", "1.2", "test")
    assert leases.claim(job.id, "convert", "a:1", 10).refused is None
    clock.advance(5)
    assert leases.renew(job.id, "a:1", 10)
    clock.advance(9)
    assert leases.interrupt_expired() == []
    clock.advance(2)
    assert leases.interrupt_expired() == [job.id]
    assert not leases.renew(job.id, "a:1", 10)
    assert leases.take_due(reconcile_after_s=60) == [(job.id, "convert")]
    claim = leases.claim(job.id, "convert", "b:2", 10)
    assert claim.refused is None and claim.attempt == 2
    with pytest.raises(LeaseLostError):
        jobs.transition(job.id, JobState.segmenting, holder="a:1")


def test_a_lost_task_is_dispatched_again_when_its_queue_has_no_busy_worker(
    store: tuple[JobStore, FrozenClock],
) -> None:
    jobs, clock = store
    leases = JobLeases(jobs)
    waiting, busy = jobs.create("1.2.1", "1.2", "test"), jobs.create("1.2.2", "1.2", "test")
    assert sorted(leases.take_due(reconcile_after_s=60)) == [(waiting.id, "convert"), (busy.id, "convert")]
    assert leases.claim(busy.id, "convert", "a:1", 600).refused is None
    clock.advance(61)
    leases.renew(busy.id, "a:1", 600)
    assert leases.take_due(reconcile_after_s=60) == []  # it may wait behind the busy worker's task
    jobs.transition(busy.id, JobState.segmenting, holder="a:1", dispatched=True)
    assert leases.take_due(reconcile_after_s=60) == [(waiting.id, "convert")]
    with jobs.db.read() as session:
        [lost] = session.query(Event).filter(Event.job_id == waiting.id, Event.what == "task_lost").all()
    assert "the broker lost it" in (lost.detail or "")
