"""The job pipeline with real parts: SCP and spool, SQLite, nnU-Net inference (tiny test models), highdicom,
dciodvfy and DCMTK's storescp as the destination.

One series goes through every stage once (module fixture, real inference); the other tests start from the
persisted results of that run (its spool, label map and SEG) the way a restarted node does, so each stage and
each failure path is exercised without running the network again.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
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
from node_support import (
    MRI,
    T2_SAG,
    dcmtk,
    dcmtk_storescp,
    free_port,
    node_settings,
    series_files,
    wait_for,
)
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from config.inference import InferenceConfig
from config.loader import parse_config
from config.model import SegNodeConfig
from conversion import load_series
from dicom_node.audit.tables import Association, Delivery, Event, Instance, Job
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

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "data" / "models"
SINGLE_SLICE = MRI / "pydicom_data" / "MR2_J2KI_Philips_shoulder_lossy"
#: 16 transverse-oblique slices, 128x128, same study as T2_SAG.
PD_TRA = MRI / "prostatex" / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
STAGE_PATH = [
    "queued -> converting",
    "converting -> segmenting",
    "segmenting -> encoding",
    "encoding -> sending",
    "sending -> done",
]


def pipeline_settings(tmp: Path, port: int, **overrides: Any) -> dict[str, Any]:
    """A node that routes MR series to task total_mr and sends the SEG to a storescp on ``port``."""
    data = node_settings(tmp)
    data["completion"] = {"quiet_period_s": 3600, "on_association_release": True}
    data["destinations"] = {
        "pacs": {
            "ae_title": "STORESCP",
            "host": "127.0.0.1",
            "port": port,
            "retry": {"initial_delay_s": 0.2, "factor": 2.0, "max_delay_s": 0.5, "max_attempts": 3},
        }
    }
    data["sending"] = {"connect_timeout_s": 2, "acse_timeout_s": 5, "dimse_timeout_s": 20}
    data["routes"] = [
        {"name": "localizers", "match": {"image_type_contains": ["LOCALIZER"]}, "action": "ignore"},
        {
            "name": "mr_total",
            "match": {"modality": "MR", "calling_ae_title": "PYSCU"},
            "action": {"tasks": ["total_mr"], "destinations": ["pacs"]},
        },
    ]
    data["pipeline"] = {
        "work_dir": str(tmp / "work"),
        "outbox_dir": str(tmp / "outbox"),
        "poll_interval_s": 0.1,
        "warm_up": False,
    }
    data["inference"] = {"weights_dir": str(MODELS), "device": "cpu"}
    data["seg"] = {"validate_with_dciodvfy": "always"}
    for dotted, value in overrides.items():
        node: Any = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def make_config(tmp: Path, port: int, **overrides: Any) -> SegNodeConfig:
    return parse_config(pipeline_settings(tmp, port, **overrides), "test.yaml", environ={})


def receive(node: NodeService, files: list[Path], calling: str = "PYSCU") -> int:
    """C-STORE ``files`` to the node with a real SCU, complete the series; returns the new job id."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
    assert assoc.is_established
    for path in files:
        assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
    assoc.release()

    def released() -> bool:
        with node.db.read() as session:
            last = max(session.scalars(select(Association.id)))
            return session.get_one(Association, last).result == "released"

    wait_for(released, what="association release recorded")
    [job] = node.completer.run_once()
    return job.id


def transitions(ctx: PipelineContext, job_id: int) -> list[str]:
    with ctx.db.read() as session:
        rows = session.scalars(
            select(Event).where(Event.job_id == job_id, Event.what == "job_transition").order_by(Event.id)
        )
        return [str(e.detail).split(":")[0] for e in rows]


def events(ctx: PipelineContext, job_id: int, what: str) -> list[Event]:
    with ctx.db.read() as session:
        return list(
            session.scalars(
                select(Event).where(Event.job_id == job_id, Event.what == what).order_by(Event.id)
            )
        )


def job_row(ctx: PipelineContext, job_id: int) -> Job:
    with ctx.db.read() as session:
        return session.get_one(Job, job_id)


@contextlib.contextmanager
def storescp_on(port: int, folder: Path) -> Iterator[None]:
    """DCMTK's storescp (AE title STORESCP) on a given port of 127.0.0.1, writing into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, f"storescp on port {port}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def state(ctx: PipelineContext, job_id: int) -> JobState:
    return ctx.jobs.get(job_id).state


@pytest.fixture(scope="session")
def engine() -> Engine:
    """One warm engine for the whole session, as in the node (tiny models, CPU)."""
    return Engine(InferenceConfig(weights_dir=MODELS, device="cpu"))


@dataclass
class Node:
    tmp: Path
    config: SegNodeConfig
    service: NodeService
    ctx: PipelineContext


def start_receiving_node(tmp: Path, port: int, **overrides: Any) -> Node:
    config = make_config(tmp, port, **overrides)
    service = NodeService(config, completion_interval_s=0, process_jobs=False)
    service.start()
    return Node(tmp, config, service, PipelineContext.create(config, service.audit, service.jobs))


@pytest.fixture
def make_node() -> Iterator[Callable[..., Node]]:
    """A receiving node (pipeline threads off) and the stage context on the same database."""
    started: list[Node] = []

    def make(tmp: Path, port: int, **overrides: Any) -> Node:
        node = start_receiving_node(tmp, port, **overrides)
        started.append(node)
        return node

    yield make
    for node in started:
        if node.service.server is not None:
            node.service.stop()


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


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Delivered]:
    """T2 sagittal series C-STOREd to the node, processed by the pipeline threads, SEG sent to storescp."""
    tmp = tmp_path_factory.mktemp("delivered")
    with dcmtk_storescp(tmp / "pacs") as port:
        config = make_config(tmp, port)
        service = NodeService(config, completion_interval_s=0, process_jobs=False)
        service.start()
        ctx = PipelineContext.create(config, service.audit, service.jobs)
        pipeline = Pipeline(ctx, engine_factory=lambda: engine)
        pipeline.start()
        try:
            start = time.monotonic()
            job_id = receive(service, series_files(T2_SAG))
            pipeline.wake()
            wait_for(lambda: state(ctx, job_id) is JobState.segmenting, 300, "job 1 segmenting")
            # while the engine segments the first series, a second one arrives and is converted
            second_id = receive(service, series_files(PD_TRA))
            pipeline.wake()
            wait_for(lambda: state(ctx, second_id) is not JobState.queued, 300, "job 2 picked up")
            done = (JobState.done, JobState.failed)
            wait_for(lambda: state(ctx, job_id) in done and state(ctx, second_id) in done, 900, "jobs done")
            seconds = time.monotonic() - start
            received = sorted((tmp / "pacs").iterdir())
        finally:
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
    assert transitions(ctx, job_id) == STAGE_PATH
    with ctx.db.read() as session:
        row = session.get_one(Job, job_id)
        timings = json.loads(row.stage_timings or "{}")
        assert row.route == "mr_total"
    for stage in ("converting", "segmenting", "encoding"):
        assert timings[stage]["ok"] and timings[stage]["seconds"] > 0
    assert timings["segmenting"]["inference_s"] > 0 and timings["segmenting"]["device"] == "cpu"
    assert timings["sending"]["attempts"] == 1 and timings["sending"]["seconds"] >= 0
    [routed] = events(ctx, job_id, "job_routed")
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
    [attempt] = events(ctx, job_id, "send_attempt")
    assert attempt.outcome == "success" and "pacs: attempt 1" in (attempt.detail or "")


def test_the_next_series_is_received_and_converted_while_the_engine_segments(delivered: Delivered) -> None:
    """Stages overlap and receiving is not held up: the second series arrived and was converted while the
    first was in inference; its own inference waited for the one engine."""
    ctx, first, second = delivered.ctx, delivered.job_id, delivered.second_job_id
    assert state(ctx, second) is JobState.done, ctx.jobs.get(second)
    one = json.loads(job_row(ctx, first).stage_timings or "{}")
    two = json.loads(job_row(ctx, second).stage_timings or "{}")
    inference_start = datetime.fromisoformat(one["segmenting"]["started_at"])
    inference_end = datetime.fromisoformat(one["segmenting"]["ended_at"])
    with ctx.db.read() as session:
        received_at = list(
            session.scalars(
                select(Instance.received_at).where(
                    Instance.series_instance_uid == job_row(ctx, second).series_instance_uid
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


def _resumable_copy(
    delivered: Delivered, tmp: Path, to_state: JobState, port: int, **overrides: Any
) -> tuple[Node, int]:
    """A new node with the delivered job's spool and database copied, the job put back to ``to_state``
    (as a crash would leave it), its work files kept and its outbox and deliveries removed."""
    shutil.copytree(delivered.tmp / "spool", tmp / "spool")
    shutil.copytree(delivered.tmp / "work", tmp / "work")
    for db_file in delivered.tmp.glob("audit.db*"):
        shutil.copy(db_file, tmp / db_file.name)
    config = make_config(tmp, port, **overrides)
    service = NodeService(config, completion_interval_s=0, process_jobs=False)
    service.start()
    ctx = PipelineContext.create(config, service.audit, service.jobs)
    with ctx.db.write() as session:
        job = session.get_one(Job, delivered.job_id)
        job.state = to_state.value
        job.outputs = json.dumps({"label_maps": json.loads(job.outputs or "{}")["label_maps"]})
        for row in session.scalars(select(Delivery).where(Delivery.job_id == delivered.job_id)):
            session.delete(row)
    return Node(tmp, config, service, ctx), delivered.job_id


def test_a_job_left_in_encoding_resumes_there_when_the_node_starts(
    delivered: Delivered, tmp_path: Path, engine: Engine
) -> None:
    """The pipeline rebuilds the volumes from the spool, encodes the saved label map, and sends the same SEG
    (same UIDs) again; segmentation does not run again."""
    with dcmtk_storescp(tmp_path / "pacs2") as port:
        node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, port)
        pipeline = Pipeline(node.ctx, engine_factory=lambda: engine)
        try:
            pipeline.start()
            wait_for(lambda: state(node.ctx, job_id) in (JobState.done, JobState.failed), 300, "job done")
        finally:
            pipeline.stop()
            node.service.stop()
        assert state(node.ctx, job_id) is JobState.done, node.ctx.jobs.get(job_id)
        timings = json.loads(job_row(node.ctx, job_id).stage_timings or "{}")
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
        wait_for(lambda: due_deliveries(ctx) == [delivery_id], 5, "delivery due")
        info = attempt_delivery(ctx, delivery_id)
        assert (info.state, info.last_outcome) == ("pending", "peer_unreachable")
        assert info.next_attempt_at is not None and info.last_attempt_at is not None
        delay = (info.next_attempt_at - info.last_attempt_at).total_seconds()
        assert delay == pytest.approx(expected_delay, abs=0.01)
        assert due_deliveries(ctx) == []  # not due before the back-off has passed
        assert settle_job(ctx, job_id) is None
        assert due_deliveries(ctx, info.next_attempt_at + timedelta(milliseconds=1)) == [delivery_id]
    wait_for(lambda: due_deliveries(ctx) == [delivery_id], 5, "delivery due")
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
    attempts = events(ctx, job_id, "send_attempt")
    assert [e.reason for e in attempts] == ["success"] + ["peer_unreachable"] * 3
    assert "next attempt at" in (attempts[1].detail or "") and "giving up" in (attempts[3].detail or "")

    from dicom_node.jobs.admin import retry_job

    with storescp_on(port, tmp_path / "late"):
        assert retry_job(ctx, job_id) == f"job {job_id}: sending again to pacs"
        assert state(ctx, job_id) is JobState.sending
        [delivery_id] = due_deliveries(ctx)
        info = attempt_delivery(ctx, delivery_id)
        assert (info.state, info.attempts, info.last_outcome) == ("delivered", 1, "success")
        assert settle_job(ctx, job_id) is JobState.done
    node.service.stop()
    assert len(list((tmp_path / "late").iterdir())) == 1


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


def test_an_ignore_route_cancels_the_job_and_says_why(tmp_path: Path, make_node: Callable[..., Node]) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG), calling="STORESCU")  # no rule for this caller
    ctx = node.ctx
    ctx.jobs.transition(job_id, JobState.converting)
    assert convert_stage(ctx, job_id) is None
    job = ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.cancelled, "route_ignore")
    [ignored] = events(ctx, job_id, "series_ignored")
    assert "ignored by default_route" in (ignored.detail or "")
    assert "calling AE 'STORESCU' not in [PYSCU]" in (ignored.detail or "")


def test_fan_out_gives_one_job_per_matching_route(tmp_path: Path, make_node: Callable[..., Node]) -> None:
    routes = [
        {
            "name": "research_copy",
            "match": {"modality": "MR"},
            "action": {"tasks": ["total_mr"], "destinations": ["pacs"]},
            "continue": True,
        },
        {
            "name": "clinical",
            "match": {"modality": "MR"},
            "action": {"tasks": ["total_mr"], "destinations": ["pacs"]},
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
    tmp_path: Path, make_node: Callable[..., Node], engine: Engine
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(SINGLE_SLICE))
    pipeline = Pipeline(node.ctx, engine_factory=lambda: engine)
    pipeline.start()
    try:
        wait_for(lambda: state(node.ctx, job_id) is JobState.failed, 60, "job failed")
    finally:
        pipeline.stop()
    job = node.ctx.jobs.get(job_id)
    assert (job.failed_stage, job.reason) == (JobState.converting, "single_slice")
    assert transitions(node.ctx, job_id) == ["queued -> converting", "converting -> failed"]
    with node.ctx.db.read() as session:
        detail = session.get_one(Job, job_id).detail or ""
    assert "single" in detail.lower()


def test_a_missing_spool_file_fails_the_job_naming_the_file(
    tmp_path: Path, make_node: Callable[..., Node]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    victim = sorted((tmp_path / "spool").rglob("*.dcm"))[3]
    victim.unlink()
    node.ctx.jobs.transition(job_id, JobState.converting)
    with pytest.raises(PipelineError, match=f"spool file .*{victim.name} is missing") as caught:
        convert_stage(node.ctx, job_id)
    assert caught.value.reason == "spool_file_missing"


def test_a_late_instance_after_retention_purged_its_series_fails_with_what_to_do(
    tmp_path: Path, make_node: Callable[..., Node]
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
    tmp_path: Path, make_node: Callable[..., Node]
) -> None:
    node = make_node(tmp_path, free_port())
    job_id = receive(node.service, series_files(T2_SAG))
    victim = sorted((tmp_path / "spool").rglob("*.dcm"))[5]
    victim.write_bytes(b"\x00" * 200 + b"not a DICOM file")
    node.ctx.jobs.transition(job_id, JobState.converting)
    with pytest.raises(PipelineError, match=f"cannot read .*{victim.name}") as caught:
        convert_stage(node.ctx, job_id)
    assert caught.value.reason == "spool_file_unreadable"


def test_a_label_map_that_vanished_fails_encoding_with_its_reason(
    delivered: Delivered, tmp_path: Path
) -> None:
    node, job_id = _resumable_copy(delivered, tmp_path, JobState.encoding, free_port())
    [record] = node.ctx.jobs.outputs(job_id)["label_maps"]
    (node.ctx.work_dir(job_id) / record["file"]).unlink()
    with pytest.raises(PipelineError, match="label map .* is missing") as caught:
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
    [skipped] = events(ctx, job_id, "seg_skipped")
    assert skipped.reason == "empty_segmentation"


def test_segnode_segment_also_writes_the_seg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``segnode segment`` writes a valid DICOM-SEG beside the NIfTI, with the same labels on its grid."""
    import logging

    import nibabel as nib
    import yaml

    from dicom_node.cli import main
    from dicom_node.outputs.validation import validate_with_dciodvfy

    config = tmp_path / "segnode.yaml"
    settings = {
        "inference": {"weights_dir": str(MODELS), "device": "cpu"},
        "seg": {"series_description": "{task} from the command line"},
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        code = main(["segment", str(T2_SAG), "--out", str(tmp_path / "out"), "--config", str(config)])
    finally:
        root.handlers[:] = handlers
    out = capsys.readouterr().out
    seg_path = tmp_path / "out" / "total_mr.seg.dcm"
    assert code == 0 and f"{seg_path}: DICOM-SEG BINARY" in out
    validate_with_dciodvfy(seg_path)
    labels = np.asarray(nib.load(tmp_path / "out" / "total_mr.nii.gz").dataobj)
    [volume] = load_series(series_files(T2_SAG))
    seg = hd.seg.segread(seg_path)
    assert seg.SeriesDescription == "total_mr from the command line"
    frames = seg.get_pixels_by_source_instance(
        [r.sop_instance_uid for r in volume.slice_refs], combine_segments=True, relabel=False
    )
    present = [int(v) for v in np.unique(labels) if v != 0]
    lut = np.zeros(max(present) + 1, dtype=np.uint8)
    lut[1 : len(present) + 1] = present
    np.testing.assert_array_equal(lut[frames].transpose(2, 1, 0), labels)
