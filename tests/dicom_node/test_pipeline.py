"""The job pipeline with real parts: SCP and spool, SQLite, nnU-Net inference (tiny test models), highdicom,
dciodvfy and DCMTK's storescp as the destination.

One series goes through every stage once (module fixture, real inference); the other tests start from the
persisted results of that run (its spool, label map and SEG) the way a restarted node does, so each stage and
each failure path is exercised without running the network again.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from dicom_node.audit.tables import Delivery, Instance, Job
from dicom_node.failpoints import Failpoints
from dicom_node.jobs.admin import retry_job
from dicom_node.jobs.context import PipelineContext, PipelineError
from dicom_node.jobs.convert import convert_stage, reload_volumes
from dicom_node.jobs.records import seg_outputs
from dicom_node.jobs.store import JobState
from dicom_node.jobs.workers import Pipeline
from dicom_node.outputs.encode import encode_stage
from dicom_node.outputs.outbox import (
    attempt_delivery,
    deliveries_of,
    due_deliveries,
    open_deliveries,
    settle_job,
)
from dicom_node.outputs.seg import segments_from_catalog
from dicom_node.service import NodeService
from inference.engine import Engine
from tests.support import audit
from tests.support.dcmtk import storescp
from tests.support.paths import PD_TRA, T2_SAG, TEST_MRI, series_files
from tests.support.pipeline import PipelineNode, pipeline_config, receive, state
from tests.support.ports import free_port
from tests.support.series import header_voxel_ml
from tests.support.waiting import wait_until

SINGLE_SLICE = TEST_MRI / "pydicom_data" / "MR2_J2KI_Philips_shoulder_lossy"
STAGE_PATH = [
    "queued -> converting",
    "converting -> segmenting",
    "segmenting -> encoding",
    "encoding -> sending",
    "sending -> done",
]


@dataclass
class Delivered:
    """What the full run left behind."""

    tmp: Path
    job_id: int
    ctx: PipelineContext
    received: list[Path]
    label_map: np.ndarray
    outbox: Path
    seconds: float
    second_job_id: int
    all_received: list[Path]


class GatedEngine:
    """The real engine, whose first ``segment`` call waits until the test opens the gate: the first job
    stands still in inference for as long as the test needs it there."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.entered = threading.Event()
        self.gate = threading.Event()

    def segment(self, *args: Any, **kwargs: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(600), "the test never opened the gate"
        return self.engine.segment(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Delivered]:
    """T2 sagittal series C-STOREd to the node, processed by the pipeline threads, SEG sent to storescp;
    while the first series is held in inference, a second one arrives and is converted."""
    tmp = tmp_path_factory.mktemp("delivered")
    gated = GatedEngine(engine)
    with storescp(tmp / "pacs") as pacs:
        config = pipeline_config(tmp, pacs.port)
        service = NodeService(config, completion_interval_s=0, process_jobs=False)
        service.start()
        ctx = PipelineContext.create(config, service.audit, service.jobs)
        pipeline = Pipeline(ctx, engine_factory=lambda: gated)
        pipeline.start()
        try:
            start = time.monotonic()
            job_id = receive(service, series_files(T2_SAG))
            pipeline.wake()
            wait_until(gated.entered.is_set, 300, "job 1 in inference")
            second_id = receive(service, series_files(PD_TRA))
            pipeline.wake()
            # converted, waiting for the one engine
            wait_until(lambda: state(ctx, second_id) is JobState.segmenting, 300, "job 2 converted")
            gated.gate.set()
            done = (JobState.done, JobState.failed)
            wait_until(lambda: state(ctx, job_id) in done and state(ctx, second_id) in done, 900, "jobs done")
            seconds = time.monotonic() - start
            received = sorted((tmp / "pacs").iterdir())
        finally:
            gated.gate.set()
            pipeline.stop()
            service.stop()
    [record] = ctx.jobs.outputs(job_id)["label_maps"]
    label_map = np.load(ctx.work_dir(job_id) / record["file"])
    [output] = seg_outputs(ctx.jobs, job_id)
    mine = [
        p
        for p in received
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == output.sop_instance_uid
    ]
    yield Delivered(tmp, job_id, ctx, mine, label_map, ctx.outbox_dir(job_id), seconds, second_id, received)


def test_a_series_goes_through_every_stage_and_its_seg_reaches_the_destination(delivered: Delivered) -> None:
    ctx, job_id = delivered.ctx, delivered.job_id
    job = ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.done, None), job
    assert audit.transitions(ctx.db, job_id=job_id) == STAGE_PATH
    with ctx.db.read() as session:
        row = session.get_one(Job, job_id)
        timings = json.loads(row.stage_timings or "{}")
        assert row.route == "mr_total"
    for stage in ("converting", "segmenting", "encoding"):
        assert timings[stage]["ok"] and timings[stage]["seconds"] > 0
    assert timings["segmenting"]["inference_s"] > 0 and timings["segmenting"]["device"] == "cpu"
    assert timings["sending"]["attempts"] == 1 and timings["sending"]["seconds"] >= 0
    [routed] = audit.events(ctx.db, "job_routed", job_id=job_id)
    assert routed.reason == "mr_total" and "localizers: no match" in (routed.detail or "")

    # the destination holds exactly the SEG of the outbox, byte for byte in content
    [output] = seg_outputs(ctx.jobs, job_id)
    assert len(delivered.received) == 1
    sent = pydicom.dcmread(delivered.received[0])
    assert sent.SOPInstanceUID == output.sop_instance_uid
    assert sent.SeriesInstanceUID == output.series_instance_uid
    source = pydicom.dcmread(series_files(T2_SAG)[0], stop_before_pixels=True)
    assert sent.StudyInstanceUID == source.StudyInstanceUID
    assert sent.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert sent.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    [delivery] = deliveries_of(ctx, job_id)
    assert (delivery.state, delivery.attempts, delivery.last_outcome) == ("delivered", 1, "success")
    [attempt] = audit.events(ctx.db, "send_attempt", job_id=job_id)
    assert attempt.outcome == "success" and "pacs: attempt 1" in (attempt.detail or "")


def test_the_next_series_is_received_and_converted_while_the_engine_segments(delivered: Delivered) -> None:
    """Stages overlap and receiving is not held up: the second series arrived and was converted while the
    first was in inference; its own inference waited for the one engine."""
    ctx, first, second = delivered.ctx, delivered.job_id, delivered.second_job_id
    assert state(ctx, second) is JobState.done, ctx.jobs.get(second)
    one = json.loads(audit.job(ctx.db, first).stage_timings or "{}")
    two = json.loads(audit.job(ctx.db, second).stage_timings or "{}")
    inference_start = datetime.fromisoformat(one["segmenting"]["started_at"])
    inference_end = datetime.fromisoformat(one["segmenting"]["ended_at"])
    with ctx.db.read() as session:
        received_at = list(
            session.scalars(
                select(Instance.received_at).where(
                    Instance.series_instance_uid == audit.job(ctx.db, second).series_instance_uid
                )
            )
        )
    assert len(received_at) == len(series_files(PD_TRA))
    assert all(inference_start < at < inference_end for at in received_at)
    assert datetime.fromisoformat(two["converting"]["ended_at"]) < inference_end
    assert datetime.fromisoformat(two["segmenting"]["started_at"]) >= inference_end
    assert len(delivered.all_received) == 2


def test_the_sent_seg_reads_back_as_the_label_map(delivered: Delivered) -> None:
    """The SEG's pixels, read with highdicom, are the label map saved by the segmentation stage."""
    ctx, job_id = delivered.ctx, delivered.job_id
    [volume] = reload_volumes(ctx, job_id).volumes
    seg = hd.seg.segread(delivered.received[0])
    frames = seg.get_pixels_by_source_instance(
        [r.sop_instance_uid for r in volume.slice_refs], combine_segments=True, relabel=False
    )
    present = [int(v) for v in np.unique(delivered.label_map) if v != 0]
    assert present, "the tiny models found no structure in the series"
    lut = np.zeros(max(present) + 1, dtype=np.uint8)
    for number in range(1, len(present) + 1):
        lut[number] = present[number - 1]
    back = lut[frames].transpose(2, 1, 0)
    np.testing.assert_array_equal(back, delivered.label_map)
    names = [seg.get_segment_description(n).segment_label for n in range(1, len(present) + 1)]
    catalog = segments_from_catalog("total_mr")
    assert names == [catalog[v].name for v in present]


#: Plausibility cut-offs of TotalSegmentator's MRI paper (ml), as issue 13 lists them.
PAPER_CUTOFFS = {
    "spleen": 40.0,
    "kidney_right": 50.0,
    "kidney_left": 30.0,
    "liver": 100.0,
    "adrenal_gland_right": 1.0,
    "adrenal_gland_left": 1.0,
}


def test_the_job_records_every_structures_volume_and_segnode_results_prints_it(
    delivered: Delivered, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Job.outputs['volumetry']``: voxel count x voxel volume (from the headers, within 0.1 %), the border
    flag from the label map's faces, the paper's cut-offs; ``segnode results`` prints the same rows as
    CSV, JSON and a table."""
    from dicom_node.cli import main
    from dicom_node.outputs import volumetry

    ctx, job_id, label_map = delivered.ctx, delivered.job_id, delivered.label_map
    rows = ctx.jobs.outputs(job_id)["volumetry"]
    counts = np.bincount(label_map.ravel())
    present = [int(v) for v in np.flatnonzero(counts) if v]
    assert [r["label"] for r in rows] == present
    voxel_ml = header_voxel_ml(series_files(T2_SAG))
    faces = np.concatenate(
        [f.ravel() for a in range(3) for f in (np.take(label_map, 0, a), np.take(label_map, -1, a))]
    )
    catalog = segments_from_catalog("total_mr")
    for row in rows:
        assert row["display_name"] == catalog[row["label"]].name
        assert row["voxels"] == counts[row["label"]]
        assert row["volume_ml"] == pytest.approx(counts[row["label"]] * voxel_ml, rel=1e-3)
        assert row["touches_border"] == (row["label"] in faces)
        assert row["cutoff_ml"] == PAPER_CUTOFFS.get(row["structure"])
        assert row["below_cutoff"] == (row["cutoff_ml"] is not None and row["volume_ml"] < row["cutoff_ml"])
    url = ctx.config.database.url
    assert main(["results", str(job_id), "--database", url, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows
    assert main(["results", str(job_id), "--database", url, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(volumetry.RESULT_COLUMNS)
    assert [int(line.split(",")[3]) for line in lines[1:]] == present
    assert main(["results", str(job_id), "--database", url]) == 0
    text = capsys.readouterr().out
    assert f"job {job_id}: series {rows[0]['series_instance_uid']}" in text
    for row in rows:
        assert f"{row['volume_ml']:.2f}" in text and row["display_name"] in text
    assert main(["results", "999999", "--database", url]) == 1
    assert "job 999999 does not exist" in capsys.readouterr().err


def _resumable_copy(
    delivered: Delivered, tmp: Path, to_state: JobState, port: int, **overrides: Any
) -> tuple[PipelineNode, int]:
    """A new node with the delivered job's spool and database copied, the job put back to ``to_state``
    (as a crash would leave it), its work files kept and its outbox and deliveries removed."""
    shutil.copytree(delivered.tmp / "spool", tmp / "spool")
    shutil.copytree(delivered.tmp / "work", tmp / "work")
    for db_file in delivered.tmp.glob("audit.db*"):
        shutil.copy(db_file, tmp / db_file.name)
    config = pipeline_config(tmp, port, **overrides)
    service = NodeService(config, completion_interval_s=0, process_jobs=False)
    service.start()
    ctx = PipelineContext.create(config, service.audit, service.jobs)
    with ctx.db.write() as session:
        job = session.get_one(Job, delivered.job_id)
        job.state = to_state.value
        job.outputs = json.dumps({"label_maps": json.loads(job.outputs or "{}")["label_maps"]})
        for row in session.scalars(select(Delivery).where(Delivery.job_id == delivered.job_id)):
            session.delete(row)
    return PipelineNode(tmp, config, service, ctx), delivered.job_id


def test_a_job_left_in_encoding_resumes_there_when_the_node_starts(
    delivered: Delivered, tmp_path: Path, engine: Engine
) -> None:
    """The pipeline rebuilds the volumes from the spool, encodes the saved label map, and sends the same SEG
    (same UIDs) again; segmentation does not run again."""
    with storescp(tmp_path / "pacs2") as pacs:
        node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, pacs.port)
        pipeline = Pipeline(node.ctx, engine_factory=lambda: engine)
        try:
            pipeline.start()
            wait_until(lambda: state(node.ctx, job_id) in (JobState.done, JobState.failed), 300, "job done")
        finally:
            pipeline.stop()
            node.service.stop()
        assert state(node.ctx, job_id) is JobState.done, node.ctx.jobs.get(job_id)
        timings = json.loads(audit.job(node.ctx.db, job_id).stage_timings or "{}")
        assert [r["stage"] for r in timings["runs"]] == [
            "converting",
            "segmenting",
            "encoding",
            "sending",
            "encoding",  # resumed: no second segmentation
            "sending",
        ]
        [again] = sorted((tmp_path / "pacs2").iterdir())
        first = pydicom.dcmread(delivered.received[0])
        second = pydicom.dcmread(again)
        assert (second.SOPInstanceUID, second.SeriesInstanceUID) == (
            first.SOPInstanceUID,
            first.SeriesInstanceUID,
        )
        assert second.PixelData == first.PixelData


def test_an_unreachable_destination_is_retried_with_back_off_then_the_job_fails_and_retry_sends_again(
    delivered: Delivered, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet
    node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, port)
    ctx = node.ctx
    converted = reload_volumes(ctx, job_id)
    outputs = encode_stage(ctx, converted)
    assert open_deliveries(ctx, job_id, outputs) == ["pacs"]
    assert state(ctx, job_id) is JobState.sending

    [delivery_id] = due_deliveries(ctx)
    for expected_delay in (0.2, 0.4):
        wait_until(lambda: due_deliveries(ctx) == [delivery_id], 60, "delivery due")
        info = attempt_delivery(ctx, delivery_id)
        assert (info.state, info.last_outcome) == ("pending", "peer_unreachable")
        assert info.next_attempt_at is not None and info.last_attempt_at is not None
        delay = (info.next_attempt_at - info.last_attempt_at).total_seconds()
        assert delay == pytest.approx(expected_delay, abs=0.01)
        # not due before the back-off has passed, due once it has
        assert due_deliveries(ctx, info.next_attempt_at - timedelta(milliseconds=1)) == []
        assert settle_job(ctx, job_id) is None
        assert due_deliveries(ctx, info.next_attempt_at + timedelta(milliseconds=1)) == [delivery_id]
    wait_until(lambda: due_deliveries(ctx) == [delivery_id], 60, "delivery due")
    info = attempt_delivery(ctx, delivery_id)  # the third and last attempt (max_attempts 3)
    assert (info.state, info.attempts, info.next_attempt_at) == ("failed", 3, None)
    assert settle_job(ctx, job_id) is JobState.failed
    job = ctx.jobs.get(job_id)
    assert (job.state, job.failed_stage, job.reason) == (
        JobState.failed,
        JobState.sending,
        "peer_unreachable",
    )
    # the copied history holds the first run's successful attempt, then this destination's three tries
    attempts = audit.events(ctx.db, "send_attempt", job_id=job_id)
    assert [e.reason for e in attempts] == ["success"] + ["peer_unreachable"] * 3
    assert "next attempt at" in (attempts[1].detail or "") and "giving up" in (attempts[3].detail or "")

    with storescp(tmp_path / "late", port=port):
        assert retry_job(ctx, job_id) == f"job {job_id}: sending again to pacs"
        assert state(ctx, job_id) is JobState.sending
        [delivery_id] = due_deliveries(ctx)
        info = attempt_delivery(ctx, delivery_id)
        assert (info.state, info.attempts, info.last_outcome) == ("delivered", 1, "success")
        assert settle_job(ctx, job_id) is JobState.done
    node.service.stop()
    assert len(list((tmp_path / "late").iterdir())) == 1


def test_a_route_without_seg_makes_and_sends_only_the_kinds_it_asks_for(
    delivered: Delivered, tmp_path: Path
) -> None:
    """A route for a planning system: RTSTRUCT and overlay, no SEG (and so no SR). Only those two kinds are
    written, each is a delivery of its own, and the destination receives exactly them."""
    with storescp(tmp_path / "tps") as tps:
        route = {
            "name": "mr_total",
            "match": {"modality": "MR", "calling_ae_title": "PYSCU"},
            "action": {"tasks": ["total_mr"], "outputs": ["rtstruct", "overlay"], "destinations": ["pacs"]},
        }
        node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, tps.port, routes=[route])
        ctx = node.ctx
        assert encode_stage(ctx, reload_volumes(ctx, job_id)) == []
        assert [o["kind"] for o in ctx.jobs.outputs(job_id)["derived"]] == ["overlay", "rtstruct"]
        assert open_deliveries(ctx, job_id, []) == ["pacs"]
        for delivery_id in due_deliveries(ctx):
            assert attempt_delivery(ctx, delivery_id).state == "delivered"
        assert settle_job(ctx, job_id) is JobState.done
        node.service.stop()
    assert sorted(d.kind for d in deliveries_of(ctx, job_id)) == ["overlay", "rtstruct"]
    classes = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID) for f in tps.folder.iterdir()]
    assert sorted(set(classes)) == ["1.2.840.10008.5.1.4.1.1.481.3", "1.2.840.10008.5.1.4.1.1.7"]
    assert classes.count("1.2.840.10008.5.1.4.1.1.481.3") == 1
    assert len(classes) == 1 + len(series_files(T2_SAG))


def test_a_kind_that_cannot_be_made_fails_alone_and_a_retry_makes_and_sends_only_it(
    delivered: Delivered, tmp_path: Path
) -> None:
    """The RTSTRUCT encoder fails (the test-only fault plan): the SEG, SR and overlay are delivered, the
    RTSTRUCT's delivery fails with the encoder's reason and the job ends failed naming it. ``retry`` encodes
    the job again (same UIDs) and sends only the RTSTRUCT."""
    with storescp(tmp_path / "pacs") as pacs:
        route = {
            "name": "mr_total",
            "match": {"modality": "MR", "calling_ae_title": "PYSCU"},
            "action": {
                "tasks": ["total_mr"],
                "outputs": ["seg", "sr", "overlay", "rtstruct"],
                "destinations": ["pacs"],
            },
        }
        node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, pacs.port, routes=[route])
        ctx = node.ctx
        ctx.failpoints = Failpoints(fail_output_kinds=frozenset({"rtstruct"}))

        def encode_and_send() -> JobState | None:
            open_deliveries(ctx, job_id, encode_stage(ctx, reload_volumes(ctx, job_id)))
            for delivery_id in due_deliveries(ctx):
                attempt_delivery(ctx, delivery_id)
            return settle_job(ctx, job_id)

        assert encode_and_send() is JobState.failed
        kinds = {d.kind: d for d in deliveries_of(ctx, job_id)}
        assert {k: (d.state, d.attempts) for k, d in kinds.items()} == {
            "seg": ("delivered", 1),
            "sr": ("delivered", 1),
            "overlay": ("delivered", 1),
            "rtstruct": ("failed", 0),
        }
        assert kinds["rtstruct"].last_outcome == "output_encoding_failed"
        job = ctx.jobs.get(job_id)
        assert (job.failed_stage, job.reason) == (JobState.sending, "output_encoding_failed")
        [ended] = [
            e
            for e in audit.events(ctx.db, "job_transition", job_id=job_id)
            if "-> failed" in (e.detail or "")
        ]
        assert "pacs (rtstruct): series " in (ended.detail or "")
        [event] = audit.events(ctx.db, "output_failed", job_id=job_id)
        assert event.reason == "output_encoding_failed" and (event.detail or "").startswith("rtstruct: ")
        received = len(list(pacs.folder.iterdir()))
        assert received == 2 + len(series_files(T2_SAG))

        ctx.failpoints = Failpoints()  # the cause is fixed
        assert (
            retry_job(ctx, job_id)
            == f"job {job_id}: encoding rtstruct again, then sending to pacs (rtstruct)"
        )
        assert ctx.jobs.get(job_id).state is JobState.encoding
        assert encode_and_send() is JobState.done
        node.service.stop()
    again = {d.kind: (d.state, d.attempts) for d in deliveries_of(ctx, job_id)}
    assert again == dict.fromkeys(["seg", "sr", "overlay"], ("delivered", 1)) | {"rtstruct": ("delivered", 1)}
    files = list(pacs.folder.iterdir())
    assert len(files) == received + 1
    rtstructs = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "RTSTRUCT"]
    assert len(rtstructs) == 1


def test_a_rejecting_destination_fails_without_waiting_for_the_retry_budget(
    delivered: Delivered, tmp_path: Path
) -> None:
    """A destination that does not know SegNode's calling AE title (here SegNode's own SCP, which accepts
    only its listed callers) rejects the association permanently: no retry."""
    port = free_port()
    node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, port, **{"network.port": port})
    ctx = node.ctx
    open_deliveries(ctx, job_id, encode_stage(ctx, reload_volumes(ctx, job_id)))
    [delivery_id] = due_deliveries(ctx)
    info = attempt_delivery(ctx, delivery_id)
    node.service.stop()
    assert (info.state, info.attempts, info.last_outcome) == ("failed", 1, "association_rejected")
    assert "rejected" in (info.last_status or "")
    assert settle_job(ctx, job_id) is JobState.failed
    assert ctx.jobs.get(job_id).reason == "association_rejected"


def test_an_ignore_route_cancels_the_job_and_says_why(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG), calling="STORESCU")  # no rule for this caller
    ctx = node.ctx
    ctx.jobs.transition(job_id, JobState.converting)
    assert convert_stage(ctx, job_id) is None
    job = ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.cancelled, "route_ignore")
    [ignored] = audit.events(ctx.db, "series_ignored", job_id=job_id)
    assert "ignored by default_route" in (ignored.detail or "")
    assert "calling AE 'STORESCU' not in [PYSCU]" in (ignored.detail or "")


def test_fan_out_gives_one_job_per_matching_route(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    routes = [
        {
            "name": "research_copy",
            "match": {"modality": "MR"},
            "action": {"tasks": ["total_mr"], "outputs": ["seg"], "destinations": ["pacs"]},
            "continue": True,
        },
        {
            "name": "clinical",
            "match": {"modality": "MR"},
            "action": {"tasks": ["total_mr"], "outputs": ["seg"], "destinations": ["pacs"]},
        },
    ]
    node = make_node(tmp_path, free_port(), routes=routes)
    ctx = node.ctx
    job_id = receive(node.service, series_files(T2_SAG))
    ctx.jobs.transition(job_id, JobState.converting)
    converted = convert_stage(ctx, job_id)
    assert converted is not None and converted.plan.route == "research_copy"
    assert [v.shape for v in converted.volumes] == [(320, 320, 19)]
    with ctx.db.read() as session:
        rows = list(session.scalars(select(Job).order_by(Job.id)))
    assert [(r.id, r.route, r.state) for r in rows] == [
        (job_id, "research_copy", "converting"),
        (job_id + 1, "clinical", "queued"),
    ]
    # the second job is not superseded by the first: both carry on
    ctx.jobs.transition(job_id + 1, JobState.converting)
    second = convert_stage(ctx, job_id + 1)
    assert second is not None and second.plan.route == "clinical"


def test_a_single_slice_series_fails_at_conversion_with_its_reason(
    tmp_path: Path, make_node: Callable[..., PipelineNode], engine: Engine
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(SINGLE_SLICE))
    pipeline = Pipeline(node.ctx, engine_factory=lambda: engine)
    pipeline.start()
    try:
        wait_until(lambda: state(node.ctx, job_id) is JobState.failed, 60, "job failed")
    finally:
        pipeline.stop()
    job = node.ctx.jobs.get(job_id)
    assert (job.failed_stage, job.reason) == (JobState.converting, "single_slice")
    assert audit.transitions(node.ctx.db, job_id=job_id) == ["queued -> converting", "converting -> failed"]
    with node.ctx.db.read() as session:
        detail = session.get_one(Job, job_id).detail or ""
    assert "single" in detail.lower()


def test_a_missing_spool_file_fails_the_job_naming_the_file(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    victim = sorted((tmp_path / "spool").rglob("*.dcm"))[3]
    victim.unlink()
    node.ctx.jobs.transition(job_id, JobState.converting)
    with pytest.raises(
        PipelineError, match=f"no longer in the spool \\(first: instance {victim.stem}\\)"
    ) as caught:
        convert_stage(node.ctx, job_id)
    assert caught.value.reason == "spool_file_missing"
    assert str(tmp_path) not in caught.value.message and "send the series again" in caught.value.message


def test_a_late_instance_after_retention_purged_its_series_fails_with_what_to_do(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    """The series ended (here: its job failed), retention deleted its files after failed_days, then one
    more instance arrives: the new job cannot segment it alone and says so (``spool_purged``)."""
    from dicom_node.jobs.retention import RetentionSweeper

    node = make_node(tmp_path, free_port())
    files = series_files(T2_SAG)
    first_job = receive(node.service, files[:-1])
    node.ctx.jobs.transition(first_job, JobState.failed, reason="inference_failed", detail="test")
    swept = RetentionSweeper(node.ctx).sweep(now=node.ctx.now() + timedelta(days=31))
    assert swept.files == len(files) - 1
    late_job = receive(node.service, files[-1:])
    assert late_job != first_job
    node.ctx.jobs.transition(late_job, JobState.converting)
    with pytest.raises(PipelineError) as caught:
        convert_stage(node.ctx, late_job)
    assert caught.value.reason == "spool_purged"
    assert (
        f"{len(files) - 1} of its {len(files)} instance(s) were deleted by retention" in caught.value.message
    )
    assert "send the complete series again" in caught.value.message


def test_an_unreadable_spool_file_fails_the_job_naming_the_file(
    tmp_path: Path, make_node: Callable[..., PipelineNode]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    victim = sorted((tmp_path / "spool").rglob("*.dcm"))[5]
    victim.write_bytes(b"\x00" * 200 + b"not a DICOM file")
    node.ctx.jobs.transition(job_id, JobState.converting)
    with pytest.raises(PipelineError, match=f"cannot read .*{victim.name}") as caught:
        convert_stage(node.ctx, job_id)
    assert caught.value.reason == "spool_file_unreadable"
    assert str(tmp_path) not in caught.value.message and "send the series again" in caught.value.message


def test_a_label_map_that_vanished_fails_encoding_with_its_reason(
    delivered: Delivered, tmp_path: Path
) -> None:
    node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, free_port())
    [record] = node.ctx.jobs.outputs(job_id)["label_maps"]
    (node.ctx.work_dir(job_id) / record["file"]).unlink()
    with pytest.raises(PipelineError, match="label map .* is no longer in the work folder") as caught:
        encode_stage(node.ctx, reload_volumes(node.ctx, job_id))
    node.service.stop()
    assert caught.value.reason == "label_map_missing"


def test_an_empty_label_map_ends_the_job_done_with_nothing_to_send(
    delivered: Delivered, tmp_path: Path
) -> None:
    node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, free_port())
    ctx = node.ctx
    [record] = ctx.jobs.outputs(job_id)["label_maps"]
    np.save(ctx.work_dir(job_id) / record["file"], np.zeros_like(delivered.label_map))
    ctx.jobs.set_output(job_id, "label_maps", [record])
    outputs = encode_stage(ctx, reload_volumes(ctx, job_id))
    assert outputs == []
    assert open_deliveries(ctx, job_id, outputs) == []
    node.service.stop()
    job = ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.done, "empty_segmentation")
    [skipped] = audit.events(ctx.db, "seg_skipped", job_id=job_id)
    assert skipped.reason == "empty_segmentation"
