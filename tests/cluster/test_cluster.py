"""Two receivers, workers and Orthanc on real PostgreSQL and Redis: every series ends done exactly once with
one SEG series in Orthanc; a series split across both receivers becomes one job; a worker killed in a stage,
or between committing a stage and acknowledging its task, changes nothing of the outcome; receiving goes on
while Redis is down and every job ends done once it is back.

The servers are shared by the module's tests (each test sends series with its own UIDs); the workers of
each test are started by it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.audit.tables import Event
from dicom_node.jobs.store import JobState
from tests.cluster.cluster_support import CALLER, Cluster
from tests.support.paths import T2_SAG
from tests.support.scu import associate, send_series, store
from tests.support.series import RenamedSeries, renamed_series
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: How long the Redis outage of the broker test lasts (30 s: the scenario the cluster is built for; the
#: assertions do not depend on it, SEGNODE_TEST_BROKER_OUTAGE_S shortens it for a quick local run).
OUTAGE_S = float(os.environ.get("SEGNODE_TEST_BROKER_OUTAGE_S", "30"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster.start(tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def workers(cluster: Cluster) -> Iterator[Cluster]:
    """The test's workers are stopped (a drain: SIGTERM) when it ends."""
    try:
        yield cluster
    finally:
        cluster.stop_workers()


def series(tmp_path: Path, tag: str) -> RenamedSeries:
    return renamed_series(T2_SAG, tmp_path / tag, tag)


def send(port: int, source: RenamedSeries) -> None:
    assert send_series(port, source.files, CALLER) == [0] * len(source.files)


def assert_done_once(cluster: Cluster, source: RenamedSeries) -> int:
    """The series' one job ends done, once, and Orthanc holds one SEG series for it."""
    job_id = cluster.wait_for_job(source.series_instance_uid)
    cluster.wait_for_state(job_id, {JobState.done})
    assert [j.id for j in cluster.jobs(source.series_instance_uid)] == [job_id]
    moves = [e.detail or "" for e in cluster.events(job_id, "job_transition")]
    assert sum("-> done" in m for m in moves) == 1, moves
    segs = cluster.orthanc.seg_instances(source.study_instance_uid, source.series_instance_uid)
    assert len({series_uid for series_uid, _ in segs}) == 1, segs
    return job_id


def claims(cluster: Cluster, job_id: int, stage: str) -> list[Event]:
    return [e for e in cluster.events(job_id, "stage_claimed") if e.reason == stage]


def test_series_sent_to_either_receiver_end_done_once_and_a_split_series_is_one_job(
    workers: Cluster, tmp_path: Path
) -> None:
    cluster = workers
    identities = {cluster.worker("w1").start(), cluster.worker("w2").start()}
    one, two, split = series(tmp_path, "one"), series(tmp_path, "two"), series(tmp_path, "split")
    r1, r2 = (receiver.port for receiver in cluster.receivers)
    send(r1, one)
    send(r2, two)
    # the split series: an association open on each receiver, half of the instances on each, then released
    half = len(split.files) // 2
    a, b = associate(r1, CALLER, files=split.files), associate(r2, CALLER, files=split.files)
    assert store(a, split.files[:half]) == [0] * half
    assert store(b, split.files[half:]) == [0] * (len(split.files) - half)
    a.release()
    b.release()
    for source in (one, two, split):
        job_id = assert_done_once(cluster, source)
        timings = cluster.timings(job_id)
        assert {timings[stage]["worker"] for stage in ("converting", "segmenting", "encoding")} <= identities
    [completed] = [
        e for e in cluster.events_of_series(split.series_instance_uid) if e.what == "series_complete"
    ]
    assert completed.reason == "association_release"


def test_a_worker_killed_while_it_segments_leaves_the_job_to_the_other(
    workers: Cluster, tmp_path: Path
) -> None:
    cluster = workers
    doomed = cluster.worker("doomed")
    lost = doomed.start(hold=["segmenting"])
    source = series(tmp_path, "killed")
    send(cluster.receivers[0].port, source)
    job_id = doomed.wait_held("segmenting")
    survivor = cluster.worker("survivor").start()
    doomed.kill()
    assert assert_done_once(cluster, source) == job_id
    [interrupted] = cluster.events(job_id, "job_interrupted")
    assert interrupted.reason == "worker_lost" and lost in (interrupted.detail or "")
    held_by = [(e.detail or "").split()[1] for e in claims(cluster, job_id, "segment")]
    assert held_by[0] == lost and held_by[-1] == survivor, held_by
    assert cluster.timings(job_id)["segmenting"]["worker"] == survivor


def test_a_task_delivered_again_after_its_stage_was_committed_does_nothing(
    workers: Cluster, tmp_path: Path
) -> None:
    cluster = workers
    doomed = cluster.worker("doomed-after-commit")
    lost = doomed.start(hold=["segmenting.committed"])
    source = series(tmp_path, "redelivered")
    send(cluster.receivers[1].port, source)
    job_id = doomed.wait_held("segmenting.committed")  # committed, not acknowledged
    assert JobState(cluster.jobs(source.series_instance_uid)[-1].state) is not JobState.segmenting
    # the encode task waits in its queue longer than cluster.reconcile_after_s: it is not lost, and the
    # dispatcher must not send it again (the broker counts it)
    cluster.wait_past_dispatch(job_id, cluster.reconcile_after_s + 2)
    survivor = cluster.worker("survivor-after-commit").start()
    doomed.kill()

    def skipped() -> list[Event]:
        events = cluster.events(job_id, "task_skipped")
        return [e for e in events if survivor in (e.detail or "") and "segment task" in (e.detail or "")]

    # the broker delivers the unacknowledged segment task again (visibility timeout) to the survivor
    [redelivered] = wait_until(skipped, 300, "the segment task delivered again", details=cluster.details)
    assert redelivered.reason == "stage_committed"
    assert assert_done_once(cluster, source) == job_id
    assert [(e.detail or "").split()[1] for e in claims(cluster, job_id, "segment")] == [lost]
    assert [r["stage"] for r in cluster.timings(job_id)["runs"]].count("segmenting") == 1
    assert cluster.events(job_id, "task_lost") == []
    # on a loaded machine a later stage's task can outlast the visibility timeout and come again too: it is
    # skipped the same way (nothing runs twice)
    assert {e.reason for e in cluster.events(job_id, "task_skipped")} == {"stage_committed"}


def test_receiving_goes_on_while_the_broker_is_down_and_every_job_ends_done(
    workers: Cluster, tmp_path: Path
) -> None:
    cluster = workers
    cluster.worker("w1").start()
    cluster.worker("w2").start()
    running, *during = (series(tmp_path, f"outage{n}") for n in range(3))
    send(cluster.receivers[0].port, running)
    running_job = cluster.wait_for_job(running.series_instance_uid)
    cluster.wait_for_state(
        running_job, {JobState.segmenting, JobState.encoding, JobState.sending, JobState.done}
    )
    cluster.redis.stop()
    for n, source in enumerate(during):
        send(cluster.receivers[n % 2].port, source)  # C-STORE Success without the broker
    created = [cluster.wait_for_job(s.series_instance_uid) for s in during]
    time.sleep(OUTAGE_S)  # the scenario: the broker stays away a while (no assertion depends on it)
    cluster.redis.start()
    for source in (running, *during):
        assert_done_once(cluster, source)
    assert all(
        cluster.jobs(s.series_instance_uid)[-1].id == job for s, job in zip(during, created, strict=True)
    )
