"""``kill -9`` of a real ``segnode serve`` in each stage of a job, then a restart: nothing acknowledged is
lost, the job finishes exactly once, Orthanc holds exactly one SEG of the series, the audit log shows the
interruption and the recovery.

The node runs as a subprocess with the test-only fault plan (``dicom_node.failpoints``, environment variable
``SEGNODE_TEST_FAULTS``) that holds a job a few seconds inside the stage under test, so the kill lands there
deterministically: the test polls the audit database and kills the node when the job is in the stage. The
restarted node runs without the plan. Receiving is interrupted by killing the node after a real SCU got
Success for part of the series; the PACS then sends the whole series again, as a PACS retries a failed send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc_server import Orthanc, free_port
from reliability_support import (
    T2_SAG,
    StoreLog,
    associate,
    jobs_of,
    renamed_series,
    seg_instances_of,
    series_events,
    set_keys,
    spooled,
    store,
)
from segnode_process import SegNode, wait_until

from dicom_node.jobs.store import JobState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB_TIMEOUT_S = 900
PAUSE_S = 8.0
STAGES = ["receiving", "converting", "segmenting", "encoding", "sending"]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    port = free_port()
    server = Orthanc(tmp_path / "orthanc", {"segnode": ("SEGNODE", "127.0.0.1", port)})
    server.segnode_port = port  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def job_state(node: SegNode, series_uid: str) -> JobState | None:
    jobs = node.jobs(series_uid)
    return JobState(jobs[-1].state) if jobs else None


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_in_each_stage_then_restart_finishes_the_job_exactly_once(
    stage: str, tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    series = renamed_series(T2_SAG, tmp_path / "series", f"kill-{stage}")
    source_id = orthanc.upload(series.files)
    node = SegNode(tmp_path / "segnode", orthanc.segnode_port, orthanc.dicom_port)  # type: ignore[attr-defined]
    # the series completes when the PACS's association is released; no quiet period during a restart
    set_keys(node.config_path, **{"completion.quiet_period_s": 600})
    if stage != "receiving":
        monkeypatch.setenv("SEGNODE_TEST_FAULTS", json.dumps({"stage_pause_s": {stage: PAUSE_S}}))
    acknowledged: list[str] = []
    try:
        node.start()
        monkeypatch.delenv("SEGNODE_TEST_FAULTS", raising=False)
        if stage == "receiving":
            # the PACS's association: 8 instances acknowledged, then the node dies mid-association
            log = StoreLog()
            assoc = associate(node.port, "ORTHANC", files=series.files)
            assert assoc.is_established
            store(assoc, series.files[:8], log)
            acknowledged = log.successes
            assert len(acknowledged) == 8
            node.kill()
            assoc.abort()
            assert not node.jobs(series.series_instance_uid), "a job was created for an unfinished series"
        else:
            orthanc.store_to("segnode", source_id)
            acknowledged = list(series.sop_instance_uids)
            wait_until(
                lambda: job_state(node, series.series_instance_uid) is JobState(stage),
                JOB_TIMEOUT_S,
                f"the job in {stage}",
                interval_s=0.1,
            )
            if stage == "sending":  # the worst moment: the SEG is at the PACS, the node has not recorded it
                wait_until(
                    lambda: seg_instances_of(orthanc, series.study_instance_uid, series.series_instance_uid),
                    60,
                    "the SEG in Orthanc",
                )
            node.kill()
            assert job_state(node, series.series_instance_uid) is JobState(stage)

        # nothing acknowledged is lost: recorded, and the spool file is the one recorded
        spool = node.folder / "spool"
        assert all(spooled(node.db, spool, acknowledged).values())

        node.start()
        if stage == "receiving":
            orthanc.store_to("segnode", source_id)  # the PACS sends the series again
        wait_until(
            lambda: job_state(node, series.series_instance_uid) in (JobState.done, JobState.failed),
            JOB_TIMEOUT_S,
            "the job to end",
        )
    finally:
        if node.process is not None:
            node.stop()
        node.close()

    # every instance of the series is in the spool, acknowledged ones included
    assert all(spooled(node.db, node.folder / "spool", series.sop_instance_uids).values())
    # the job finished exactly once
    [job] = jobs_of(node.db, series.series_instance_uid)
    assert (job.state, job.reason) == ("done", None), (job.reason, job.detail)
    moves = [
        str(e.detail).split(":")[0]
        for e in series_events(node.db, series.series_instance_uid, "job_transition")
    ]
    assert moves.count("sending -> done") == 1
    assert moves[-1] == "sending -> done"
    # exactly one SEG of the series at the PACS, the one the node recorded
    [output] = node.outputs(job.id)["seg"]
    assert seg_instances_of(orthanc, series.study_instance_uid, series.series_instance_uid) == [
        (output["series_instance_uid"], output["sop_instance_uid"])
    ]
    # the audit log shows the interruption and the recovery
    started = node.node_events("node_started")
    assert len(started) == 2
    if stage == "receiving":
        assert "1 open series restored" in (started[1].detail or "")
        [complete] = series_events(node.db, series.series_instance_uid, "series_complete")
        assert complete.id > started[1].id
    else:
        [interrupted] = node.events(job.id, "job_interrupted")
        assert interrupted.reason == "node_restart" and f"in {stage}" in (interrupted.detail or "")
        assert started[0].id < interrupted.id and "1 resumable job(s)" in (started[1].detail or "")
        resumed_moves = [
            str(e.detail).split(":")[0]
            for e in node.events(job.id, "job_transition")
            if e.id > interrupted.id
        ]
        assert resumed_moves[-1] == "sending -> done"
    if stage == "sending":
        [delivery] = node.deliveries(job.id)
        assert (delivery.state, delivery.attempts) == ("delivered", 1)  # the attempt before the kill was lost
        assert len(node.events(job.id, "send_attempt")) == 1
