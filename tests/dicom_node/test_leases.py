"""Cluster leases and dispatch on a frozen clock (SQLite; the row locks are PostgreSQL's, exercised by
tests/cluster): a claim takes a stage once, a redelivered task does nothing, an expired lease is an
interruption; with a real Redis as the broker, a task waiting in its queue is never sent twice however long
it waits, and a task the broker lost (restarted without its queues) is sent again once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.cluster import ClusterConfig
from config.node import PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog
from dicom_node.audit.tables import Event, Series
from dicom_node.cluster.app import Publisher
from dicom_node.jobs.leases import JobLeases
from dicom_node.jobs.store import JobState, JobStore, LeaseLostError
from tests.support.node import FrozenClock
from tests.support.redis_server import RedisServer


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


def not_asked(stage: str) -> int | None:
    """The broker's count for a dispatch that must not need it (no task is old enough to be lost)."""
    raise AssertionError(f"the broker was asked about the {stage} queue")


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
    assert leases.take_due(5, not_asked) == []  # dispatched a second ago by the worker


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
    assert leases.take_due(60, not_asked) == [(job.id, "convert")]
    claim = leases.claim(job.id, "convert", "b:2", 10)
    assert claim.refused is None and claim.attempt == 2
    with pytest.raises(LeaseLostError):
        jobs.transition(job.id, JobState.segmenting, holder="a:1")


def lost(jobs: JobStore, job_id: int) -> list[str]:
    with jobs.db.read() as session:
        return [
            e.detail or ""
            for e in session.query(Event).filter(Event.job_id == job_id, Event.what == "task_lost")
        ]


def test_a_task_waiting_in_its_queue_is_never_sent_twice_and_a_task_the_broker_lost_is_sent_once(
    store: tuple[JobStore, FrozenClock], tmp_path: Path
) -> None:
    jobs, clock = store
    leases = JobLeases(jobs)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    publisher = Publisher(ClusterConfig(broker_url=redis.url))
    try:
        first, second = jobs.create("1.2.1", "1.2", "test"), jobs.create("1.2.2", "1.2", "test")
        due = leases.take_due(60, not_asked)
        assert sorted(due) == [(first.id, "convert"), (second.id, "convert")]
        for job_id, stage in due:
            publisher.publish(stage, job_id)
        assert (publisher.waiting("convert"), publisher.waiting("segment")) == (2, 0)
        clock.advance(3600)  # an hour in the queue, no worker consuming (all busy, or none started)
        for _look in range(3):
            assert leases.take_due(60, publisher.waiting) == []
        assert publisher.waiting("convert") == 2 and lost(jobs, first.id) == []
        redis.stop()  # the broker cannot tell: nothing is taken for lost
        assert publisher.waiting("convert") is None
        assert leases.take_due(60, publisher.waiting) == []
        redis.start()  # back, without its queues
        assert publisher.waiting("convert") == 0
        assert sorted(leases.take_due(60, publisher.waiting)) == sorted(due)
        for job_id, stage in due:
            publisher.publish(stage, job_id)
        clock.advance(3600)
        assert leases.take_due(60, publisher.waiting) == []  # sent once: they wait in the queue again
        assert publisher.waiting("convert") == 2
        for job_id in (first.id, second.id):
            [detail] = lost(jobs, job_id)
            assert "the broker's convert queue holds no task" in detail
    finally:
        publisher.close()
        redis.stop()
