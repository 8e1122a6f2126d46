"""The job state machine: transition table, audit event per transition, resumable jobs, restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from config.node import PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog, InstanceHeader
from dicom_node.audit.tables import Event
from dicom_node.jobs.store import (
    STAGES,
    TRANSITIONS,
    IllegalTransitionError,
    JobNotFoundError,
    JobState,
    JobStore,
)


def make_store(tmp_path: Path) -> JobStore:
    db = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    db.upgrade()
    audit = AuditLog(db, "cfg-hash", PrivacyConfig())
    header = InstanceHeader(
        "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.1", "1.2.3", "1.2.3.4", "1.2.840.10008.1.2.1"
    )
    audit.record_instance(None, header, "1.2.3/1.2.3.4/1.2.3.4.1.dcm", 10, "0" * 64)
    return JobStore(audit)


def transitions(store: JobStore, job_id: int) -> list[tuple[str | None, str, str | None]]:
    with store.db.read() as session:
        rows = session.scalars(
            select(Event).where(Event.job_id == job_id, Event.what == "job_transition").order_by(Event.id)
        )
        return [(e.detail, e.outcome, e.reason) for e in rows]


def test_happy_path_through_every_stage_records_each_transition(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create("1.2.3.4", "1.2.3", "series complete (quiet_period)")
    assert job.state is JobState.queued
    for state in (*STAGES, JobState.done):
        job = store.transition(job.id, state)
    assert job.state is JobState.done
    assert [d for d, _o, _r in transitions(store, job.id)] == [
        "queued -> converting",
        "converting -> segmenting",
        "segmenting -> encoding",
        "encoding -> sending",
        "sending -> done",
    ]
    assert store.resumable_jobs() == []
    with store.db.read() as session:
        assert {e.config_hash for e in session.scalars(select(Event))} == {"cfg-hash"}


def test_failure_records_stage_and_reason_and_a_retry_requeues(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create("1.2.3.4", "1.2.3", "series complete")
    store.transition(job.id, JobState.converting)
    failed = store.transition(job.id, JobState.failed, reason="single_slice")
    assert (failed.state, failed.failed_stage, failed.reason) == (
        JobState.failed,
        JobState.converting,
        "single_slice",
    )
    assert transitions(store, job.id)[-1] == ("converting -> failed", "failure", "single_slice")
    retried = store.transition(job.id, JobState.queued, reason="retry requested")
    assert retried.failed_stage is None and [j.id for j in store.resumable_jobs()] == [job.id]


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ((), JobState.segmenting),  # a stage cannot be skipped
        ((), JobState.done),
        (
            (JobState.converting, JobState.segmenting, JobState.encoding, JobState.sending, JobState.done),
            JobState.failed,
        ),
        ((JobState.cancelled,), JobState.queued),  # terminal
        ((JobState.superseded,), JobState.done),  # terminal
    ],
)
def test_transitions_outside_the_table_are_refused(
    tmp_path: Path, path: tuple[JobState, ...], target: JobState
) -> None:
    store = make_store(tmp_path)
    job = store.create("1.2.3.4", "1.2.3", "series complete")
    for state in path:
        store.transition(job.id, state, reason="test")
    before = store.get(job.id)
    with pytest.raises(IllegalTransitionError, match=f"cannot move from {before.state} to {target}"):
        store.transition(job.id, target, reason="test")
    assert store.get(job.id).state is before.state


def test_failed_and_cancelled_need_a_reason_and_unknown_jobs_are_named(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create("1.2.3.4", "1.2.3", "series complete")
    with pytest.raises(IllegalTransitionError, match="a reason is required"):
        store.transition(job.id, JobState.failed)
    with pytest.raises(JobNotFoundError, match="job 999 does not exist"):
        store.transition(999, JobState.converting)


def test_the_table_covers_every_state_and_terminal_states_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[JobState.superseded] == TRANSITIONS[JobState.cancelled] == frozenset()


def test_jobs_survive_a_new_engine_and_in_progress_jobs_are_resumable(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = store.create("1.2.3.4", "1.2.3", "series complete")
    store.transition(first.id, JobState.converting)
    store.db.dispose()
    again = JobStore(AuditLog(Database(store.db.url), "cfg-hash", PrivacyConfig()))
    [resumable] = again.resumable_jobs()
    assert (resumable.id, resumable.state) == (first.id, JobState.converting)
    assert resumable.created_at.tzinfo is not None and resumable.created_at <= datetime.now(UTC)
    # the restart moves it back to queued, with its own audit event
    assert again.transition(first.id, JobState.queued, reason="node restarted").state is JobState.queued
