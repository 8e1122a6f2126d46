"""Faults inside one node process (real SCP on loopback, real SQLite, real nnU-Net inference with the tiny
test models, a real Orthanc as the PACS): the disk fills while receiving and while encoding, the engine fails
on one series, and the retention sweep with an injected clock.

The free-space probe of the node is injected (the one seam the service offers for it), so the disk "fills"
and "empties" at the moment the test chooses; the engine failure is the test-only fault plan
(``dicom_node.failpoints``) raising inside prediction for one Series Instance UID, as a CUDA error would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from config.loader import parse_config
from config.model import SegNodeConfig
from dicom_node.audit.tables import Instance
from dicom_node.failpoints import Failpoints
from dicom_node.jobs.retention import RetentionSweeper
from dicom_node.jobs.store import JobState
from dicom_node.jobs.workers import Pipeline
from dicom_node.receiving import statuses as status
from dicom_node.receiving.spool import FreeSpaceProbe, disk_free_bytes
from dicom_node.service import NodeService
from inference.engine import Engine
from tests.support import audit
from tests.support.audit import spooled
from tests.support.orthanc import Orthanc
from tests.support.paths import CINE, PD_TRA, T2_COR, T2_SAG
from tests.support.scu import StoreLog, associate, rejection, send_series, store
from tests.support.series import renamed_series
from tests.support.settings import apply_overrides, local_pipeline, node_settings
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),  # the cardiac series' leading-zero UIDs
]

JOB_TIMEOUT_S = 900
MiB = 1024 * 1024
PLENTY = 500 * 1024 * MiB


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), {})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_config(tmp: Path, orthanc: Orthanc, **overrides: Any) -> SegNodeConfig:
    data = node_settings(tmp)
    data["completion"] = {"quiet_period_s": 600, "on_association_release": True}
    data["destinations"] = {
        "orthanc": {
            "ae_title": "ORTHANC",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "retry": {"initial_delay_s": 0.5, "factor": 2.0, "max_delay_s": 2.0},
        }
    }
    data["sending"] = {"calling_ae_title": "SEGNODE", "connect_timeout_s": 3, "acse_timeout_s": 10}
    data["routes"] = [
        {
            "name": "mr_total",
            "match": {"modality": "MR"},
            # the 3 mm model only: these tests are about what happens around the inference
            "action": {
                "tasks": [{"name": "total_mr", "fast": True}],
                "outputs": ["seg"],
                "destinations": ["orthanc"],
            },
        }
    ]
    data |= local_pipeline(tmp)
    return parse_config(apply_overrides(data, overrides), "reliability.yaml", environ={})


@contextmanager
def running_node(
    config: SegNodeConfig,
    engine: Engine,
    probe: FreeSpaceProbe = disk_free_bytes,
    failpoints: Failpoints | None = None,
    housekeeping_interval_s: float = 0.0,
) -> Iterator[tuple[NodeService, Pipeline]]:
    service = NodeService(
        config,
        free_space_probe=probe,
        failpoints=failpoints or Failpoints(),
        process_jobs=False,
        completion_interval_s=0.2,
        housekeeping_interval_s=housekeeping_interval_s,
    )
    service.start()
    pipeline = Pipeline(service.context, engine_factory=lambda: engine)
    pipeline.start()
    try:
        yield service, pipeline
    finally:
        pipeline.stop()
        service.stop()


def ended_job(service: NodeService, series_uid: str) -> JobState:
    def ended() -> JobState | None:
        jobs = audit.jobs(service.db, series_uid)
        state = JobState(jobs[-1].state) if jobs else None
        return state if state in (JobState.done, JobState.failed) else None

    result: JobState = wait_until(ended, JOB_TIMEOUT_S, f"the job of series {series_uid} to end")
    return result


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_disk_full_while_receiving_and_while_encoding_refuses_keeps_and_recovers(
    tmp_path: Path, orthanc: Orthanc, engine: Engine
) -> None:
    series = renamed_series(T2_COR, tmp_path / "series", "disk-full")
    config = make_config(tmp_path / "node", orthanc, **{"storage.min_free_space_mb": 100})
    free = {"spool": PLENTY, "outbox": 10 * MiB}  # the outbox's file system is full from the start

    def probe(path: Path) -> int:
        return free["outbox"] if "outbox" in Path(path).parts else free["spool"]

    with running_node(config, engine, probe, housekeeping_interval_s=0.5) as (service, _pipeline):
        spool = Path(config.storage.spool_dir)
        log = StoreLog()
        assoc = associate(service.port, "PYSCU", files=series.files)
        assert assoc.is_established
        store(assoc, series.files[:7], log)
        free["spool"] = 100 * MiB - 1  # the spool's disk fills up mid-series
        store(assoc, series.files[7:], log)
        assert list(log.statuses.values()) == [status.SUCCESS] * 7 + [status.OUT_OF_RESOURCES] * 8
        # what it had is kept, nothing partial: 7 instances with their audit rows
        assert all(spooled(service.db, spool, log.successes).values())
        assert len(files_under(spool)) == 7
        a700 = audit.events(service.db, "instance_refused")
        assert len(a700) == 8 and all("0xA700" in (e.detail or "") for e in a700)
        # a new association meanwhile is refused as transient congestion
        other = associate(service.port, "PYSCU", files=series.files)
        assert rejection(other) == (
            status.REJECTED_TRANSIENT,
            status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
            status.REASON_TEMPORARY_CONGESTION,
        )
        assert not audit.jobs(service.db, series.series_instance_uid)
        # space returns: the sender retries the refused instances on its association
        free["spool"] = PLENTY
        store(assoc, series.files[7:], log)
        assoc.release()
        assert set(log.successes) == set(series.sop_instance_uids)

        # the job reaches encoding and fails there: no room for the SEG; its label map is kept
        assert ended_job(service, series.series_instance_uid) is JobState.failed
        [job] = audit.jobs(service.db, series.series_instance_uid)
        assert (job.failed_stage, job.reason) == ("encoding", "out_of_resources")
        assert "below the watermark of 100 MiB" in (job.detail or "") and "outbox" in (job.detail or "")
        work = Path(config.pipeline.work_dir) / str(job.id)
        assert [p.suffix for p in files_under(work)] == [".npy"]
        assert not files_under(Path(config.pipeline.outbox_dir) / str(job.id))
        assert not orthanc.seg_instances(series.study_instance_uid, series.series_instance_uid)

        # space returns: the housekeeping thread puts the job back at encoding and it completes
        free["outbox"] = PLENTY
        wait_until(
            lambda: audit.jobs(service.db, series.series_instance_uid)[0].state == "done",
            JOB_TIMEOUT_S,
            "the resumed job to be done",
        )
        [job] = audit.jobs(service.db, series.series_instance_uid)
        moves = [
            (str(e.detail).split(":")[0], e.reason)
            for e in audit.events(service.db, "job_transition", series_uid=series.series_instance_uid)
        ]
        assert ("encoding -> failed", "out_of_resources") in moves
        assert ("failed -> encoding", "space_freed") in moves
        assert moves[-1][0] == "sending -> done"
        [output] = _outputs(service, job.id)
        assert orthanc.seg_instances(series.study_instance_uid, series.series_instance_uid) == [
            (output["series_instance_uid"], output["sop_instance_uid"])
        ]
        assert all(spooled(service.db, spool, series.sop_instance_uids).values())


def _outputs(service: NodeService, job_id: int) -> list[dict[str, Any]]:
    seg: list[dict[str, Any]] = service.context.jobs.outputs(job_id)["seg"]
    return seg


def test_engine_failure_on_one_series_fails_that_job_the_node_serves_the_rest_and_retention_follows(
    tmp_path: Path, orthanc: Orthanc, engine: Engine
) -> None:
    bad = renamed_series(CINE, tmp_path / "bad", "engine-bad")
    good = renamed_series(T2_SAG, tmp_path / "good", "engine-good")
    waiting = renamed_series(PD_TRA, tmp_path / "waiting", "retention-waiting")
    # the cardiac series announces 280 Images in Acquisition and brings 12: a short quiet period completes it
    config = make_config(
        tmp_path / "node",
        orthanc,
        **{
            "retention.delivered_hours": 24,
            "retention.failed_days": 30,
            "completion.quiet_period_s": 3,
        },
    )
    failpoints = Failpoints(fail_prediction_series=frozenset({bad.series_instance_uid}))
    with running_node(config, engine, failpoints=failpoints) as (service, pipeline):
        assert send_series(service.port, bad.files) == [status.SUCCESS] * len(bad.files)
        assert send_series(service.port, good.files) == [status.SUCCESS] * len(good.files)
        assert ended_job(service, bad.series_instance_uid) is JobState.failed
        assert ended_job(service, good.series_instance_uid) is JobState.done

        [failed] = audit.jobs(service.db, bad.series_instance_uid)
        assert (failed.failed_stage, failed.reason) == ("segmenting", "inference_failed")
        assert "CUDA error" in (failed.detail or "") and bad.series_instance_uid in (failed.detail or "")
        [done] = audit.jobs(service.db, good.series_instance_uid)
        [output] = _outputs(service, done.id)
        assert orthanc.seg_instances(good.study_instance_uid, good.series_instance_uid) == [
            (output["series_instance_uid"], output["sop_instance_uid"])
        ]
        assert not orthanc.seg_instances(bad.study_instance_uid, bad.series_instance_uid)

        # a third series arrives while the pipeline is stopped: received, its job waits (undelivered)
        pipeline.stop()
        assert send_series(service.port, waiting.files) == [status.SUCCESS] * len(waiting.files)
        wait_until(lambda: audit.jobs(service.db, waiting.series_instance_uid), 30, "the waiting job")

        # retention, on an injected clock
        ctx = service.context
        spool, work, outbox = ctx.spool_root, ctx.work_root, ctx.outbox_root
        sweeper = RetentionSweeper(ctx)
        ended = max(done.updated_at, failed.updated_at)

        def present(series_uids: list[str]) -> list[bool]:
            return [
                all(spooled(service.db, spool, s.sop_instance_uids).values())
                for s in (bad, good, waiting)
                if s.series_instance_uid in series_uids
            ]

        rows = audit.count(service.db, Instance)
        assert rows == len(bad.files) + len(good.files) + len(waiting.files)
        nothing = sweeper.sweep(ended + timedelta(hours=23))
        assert (nothing.jobs, nothing.series, nothing.files) == ([], [], 0)

        first = sweeper.sweep(done.updated_at + timedelta(hours=24, seconds=1))
        assert first.series == [good.series_instance_uid] and first.jobs == [done.id]
        assert not files_under(spool / good.study_instance_uid)
        assert not files_under(work / str(done.id)) and not files_under(outbox / str(done.id))
        assert all(spooled(service.db, spool, bad.sop_instance_uids).values())  # failed: kept longer
        assert all(spooled(service.db, spool, waiting.sop_instance_uids).values())

        second = sweeper.sweep(failed.updated_at + timedelta(days=30, seconds=1))
        assert second.series == [bad.series_instance_uid]
        assert not files_under(spool / bad.study_instance_uid)
        far = sweeper.sweep(ended + timedelta(days=3650))
        assert far.series == [] and far.jobs == []
        # nothing undelivered was deleted; the audit log is kept whole
        assert all(spooled(service.db, spool, waiting.sop_instance_uids).values())
        assert audit.count(service.db, Instance) == rows
        purged = [(e.series_instance_uid, e.reason) for e in audit.events(service.db, "retention_purged")]
        assert (good.series_instance_uid, "series delivered") in purged
        assert (bad.series_instance_uid, "series ended without delivery") in purged
        assert waiting.series_instance_uid not in {s for s, _r in purged}
        assert audit.events(service.db, "series_complete", series_uid=good.series_instance_uid)
        assert [
            str(e.detail).split(":")[0]
            for e in audit.events(service.db, "job_transition", series_uid=good.series_instance_uid)
        ][-1] == "sending -> done"
