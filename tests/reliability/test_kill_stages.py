"""``kill -9`` of a real ``segnode serve`` in each stage of a job, then a restart: nothing acknowledged is
lost, the job finishes exactly once, Orthanc holds exactly one SEG of the series, the audit log shows the
interruption and the recovery.

The node runs as a subprocess with the test-only fault plan (``dicom_node.failpoints``, environment variable
``SEGNODE_TEST_FAULTS``) that holds the job inside the stage under test until released, so the kill lands
there deterministically: the test waits until the job is held and kills the node. The restarted node runs
without the plan. Receiving is interrupted by killing the node after a real SCU got
Success for part of the series; the PACS then sends the whole series again, as a PACS retries a failed send.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.jobs.store import JobState
from tests.support import audit
from tests.support.audit import spooled
from tests.support.orthanc import Orthanc
from tests.support.paths import T2_SAG
from tests.support.ports import free_port
from tests.support.scu import StoreLog, associate, store
from tests.support.series import renamed_series
from tests.support.serve import SegNode

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

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


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_in_each_stage_then_restart_finishes_the_job_exactly_once(
    stage: str, tmp_path: Path, orthanc: Orthanc
) -> None:
    series = renamed_series(T2_SAG, tmp_path / "series", f"kill-{stage}")
    source_id = orthanc.upload(series.files)
    # the series completes when the PACS's association is released; no quiet period during a restart
    node = SegNode(
        tmp_path / "segnode",
        orthanc.segnode_port,  # type: ignore[attr-defined]
        orthanc.dicom_port,
        fast=True,
        **{"completion.quiet_period_s": 600},
    )
    acknowledged: list[str] = []
    try:
        node.start(hold=[] if stage == "receiving" else [stage])
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
            job_id = node.wait_held(stage)
            assert job_id == node.wait_for_job(series.series_instance_uid)
            if stage == "sending":  # the worst moment: the SEG is at the PACS, the node has not recorded it
                assert orthanc.seg_instances(series.study_instance_uid, series.series_instance_uid)
            node.kill()
            assert node.job_state(series.series_instance_uid) is JobState(stage)

        # nothing acknowledged is lost: recorded, and the spool file is the one recorded
        spool = node.folder / "spool"
        assert all(spooled(node.db, spool, acknowledged).values())

        node.start()
        if stage == "receiving":
            orthanc.store_to("segnode", source_id)  # the PACS sends the series again
        node.wait_for_state(node.wait_for_job(series.series_instance_uid), {JobState.done, JobState.failed})
    finally:
        if node.process is not None:
            node.stop()
        node.close()

    # every instance of the series is in the spool, acknowledged ones included
    assert all(spooled(node.db, node.folder / "spool", series.sop_instance_uids).values())
    # the job finished exactly once
    [job] = audit.jobs(node.db, series.series_instance_uid)
    assert (job.state, job.reason) == ("done", None), (job.reason, job.detail)
    moves = [
        str(e.detail).split(":")[0]
        for e in audit.events(node.db, "job_transition", series_uid=series.series_instance_uid)
    ]
    assert moves.count("sending -> done") == 1
    assert moves[-1] == "sending -> done"
    # exactly one SEG of the series at the PACS, the one the node recorded
    [output] = node.outputs(job.id)["seg"]
    assert orthanc.seg_instances(series.study_instance_uid, series.series_instance_uid) == [
        (output["series_instance_uid"], output["sop_instance_uid"])
    ]
    # the audit log shows the interruption and the recovery
    started = node.node_events("node_started")
    assert len(started) == 2
    if stage == "receiving":
        assert "1 open series restored" in (started[1].detail or "")
        [complete] = audit.events(node.db, "series_complete", series_uid=series.series_instance_uid)
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
