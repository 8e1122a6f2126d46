"""End to end with a real PACS: Orthanc sends MRI series to a real ``segnode serve`` process, which segments
them with the tiny test models and sends the DICOM-SEG back to Orthanc.

Orthanc (Debian package) and SegNode run on loopback ports with their own configurations and folders; the
tests drive Orthanc through its REST API and read SegNode's audit database.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from orthanc_server import Orthanc, free_port
from segnode_process import SegNode, wait_until

from conversion import load_series
from dicom_node.jobs.store import JobState

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MRI = ROOT / "tests" / "data" / "mri" / "prostatex"
#: 19 sagittal T2 slices (Siemens Skyra).
T2_SAG = MRI / "ProstateX-0000_3.000000-t2tsesag-87368"
#: 16 transverse-oblique slices of a 3D PD series (same study).
PD_TRA = MRI / "ProstateX-0000_9.000000-tfl3d_PD_reftra1.5x1.5t3-67276"
#: Inference on the CPU of a loaded CI machine: minutes at worst.
JOB_TIMEOUT_S = 900


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".dcm")


def header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(files_of(folder)[0], stop_before_pixels=True)


@dataclass
class Stack:
    orthanc: Orthanc
    segnode: SegNode
    tmp: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    orthanc = Orthanc(tmp / "orthanc", {"segnode": ("SEGNODE", "127.0.0.1", port)})
    orthanc.start()
    segnode = SegNode(tmp / "segnode", port, orthanc.dicom_port)
    try:
        segnode.start()
        yield Stack(orthanc, segnode, tmp)
    finally:
        segnode.stop()
        segnode.close()
        orthanc.stop()


def job_of_series(node: SegNode, series_uid: str) -> int:
    def find() -> int | None:
        jobs = node.jobs(series_uid)
        return jobs[-1].id if jobs else None

    job_id: int = wait_until(find, 120, f"a job for series {series_uid}")
    return job_id


def wait_for_state(
    node: SegNode, job_id: int, states: set[JobState], timeout_s: float = JOB_TIMEOUT_S
) -> JobState:
    def reached() -> JobState | None:
        current = JobState(node.job(job_id).state)
        if current is JobState.failed and JobState.failed not in states:
            row = node.job(job_id)
            raise AssertionError(f"job {job_id} failed at {row.failed_stage}: [{row.reason}] {row.detail}")
        return current if current in states else None

    state: JobState = wait_until(reached, timeout_s, f"job {job_id} in {sorted(states)}")
    return state


def seg_series(orthanc: Orthanc, study_uid: str) -> list[dict[str, object]]:
    return orthanc.find_series(study_uid, "SEG")


def seg_instances(orthanc: Orthanc, study_uid: str, source_series_uid: str) -> list[tuple[str, str]]:
    """(Series, SOP Instance UID) of every SEG instance in the study that references the source series."""
    found = []
    for series in seg_series(orthanc, study_uid):
        for instance_id in series["Instances"]:  # type: ignore[attr-defined]
            data = io.BytesIO(orthanc.instance_file(str(instance_id)))
            ds = pydicom.dcmread(data, stop_before_pixels=True)
            if ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid:
                found.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return found


def segnode_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dicom_node.cli import main; raise SystemExit(main())", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_orthanc_sends_a_series_and_gets_the_seg_back_in_the_same_study(stack: Stack) -> None:
    orthanc, node = stack.orthanc, stack.segnode
    source = header(T2_SAG)
    orthanc.store_to("segnode", orthanc.upload(files_of(T2_SAG)))
    job_id = job_of_series(node, str(source.SeriesInstanceUID))
    wait_for_state(node, job_id, {JobState.done})

    [series] = seg_series(orthanc, str(source.StudyInstanceUID))
    [instance_id] = series["Instances"]  # type: ignore[misc]
    path = stack.tmp / "seg_from_orthanc.dcm"
    path.write_bytes(orthanc.instance_file(str(instance_id)))
    seg = pydicom.dcmread(path)
    [output] = node.outputs(job_id)["seg"]
    assert seg.SOPInstanceUID == output["sop_instance_uid"]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]

    # its pixels are SegNode's label map, on the source grid, frame by frame
    [volume] = load_series(files_of(T2_SAG))
    [record] = node.outputs(job_id)["label_maps"]
    label_map = np.load(node.folder / "work" / str(job_id) / record["file"])
    present = [int(v) for v in np.unique(label_map) if v != 0]
    assert present, "the tiny models found no structure"
    frames = hd.seg.segread(path).get_pixels_by_source_instance(
        [r.sop_instance_uid for r in volume.slice_refs], combine_segments=True, relabel=False
    )
    lut = np.zeros(max(present) + 1, dtype=np.uint8)
    lut[1 : len(present) + 1] = present
    np.testing.assert_array_equal(lut[frames].transpose(2, 1, 0), label_map)

    # the operator's view of the same job
    shown = segnode_cli("jobs", "show", str(job_id), "--format", "json", "--config", str(node.config_path))
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["state"] == "done" and data["route"] == "mr_total"
    assert {"converting", "segmenting", "encoding"} <= set(data["stage_timings"])
    [delivery] = data["deliveries"]
    assert (delivery["destination"], delivery["state"], delivery["last_outcome"]) == (
        "orthanc",
        "delivered",
        "success",
    )
    listed = segnode_cli("jobs", "list", "--config", str(node.config_path))
    assert listed.returncode == 0 and re.search(rf"^{job_id}\s+done\s+.*mr_total", listed.stdout, re.M)


def test_a_stopped_orthanc_gets_the_seg_once_it_is_back_and_the_audit_log_shows_each_try(
    stack: Stack,
) -> None:
    orthanc, node = stack.orthanc, stack.segnode
    source = header(PD_TRA)
    orthanc.store_to("segnode", orthanc.upload(files_of(PD_TRA)))
    job_id = job_of_series(node, str(source.SeriesInstanceUID))
    wait_for_state(node, job_id, {JobState.segmenting, JobState.encoding, JobState.sending})
    orthanc.stop()
    try:
        wait_until(
            lambda: len([e for e in node.events(job_id, "send_attempt") if e.outcome == "failure"]) >= 2,
            JOB_TIMEOUT_S,
            "two failed send attempts",
        )
        assert JobState(node.job(job_id).state) is JobState.sending
    finally:
        orthanc.start()
    wait_for_state(node, job_id, {JobState.done})
    tries = node.events(job_id, "send_attempt")
    assert [e.outcome for e in tries[:-1]] == ["failure"] * (len(tries) - 1) and tries[
        -1
    ].outcome == "success"
    assert {e.reason for e in tries[:-1]} == {"peer_unreachable"}
    assert all("next attempt at" in (e.detail or "") for e in tries[:-1])
    [delivery] = node.deliveries(job_id)
    assert (delivery.state, delivery.attempts) == ("delivered", len(tries))
    [output] = node.outputs(job_id)["seg"]
    assert seg_instances(orthanc, str(source.StudyInstanceUID), str(source.SeriesInstanceUID)) == [
        (output["series_instance_uid"], output["sop_instance_uid"])
    ]


def test_a_node_killed_mid_job_resumes_and_the_same_series_twice_leaves_one_seg_series(
    stack: Stack,
) -> None:
    """A second node (fresh database) receives the sagittal series Orthanc already has a SEG for, is killed
    with SIGKILL while segmenting, and resumes the job when it starts again. Its SEG has the same UIDs as
    the first one: Orthanc ends with one SEG series of that source series, not two."""
    orthanc, first = stack.orthanc, stack.segnode
    source = header(T2_SAG)
    study = str(source.StudyInstanceUID)
    [first_job] = first.jobs(str(source.SeriesInstanceUID))
    [first_output] = first.outputs(first_job.id)["seg"]

    def seg_instances_of_sagittal() -> list[tuple[str, str]]:
        return seg_instances(orthanc, study, str(source.SeriesInstanceUID))

    assert seg_instances_of_sagittal() == [
        (first_output["series_instance_uid"], first_output["sop_instance_uid"])
    ]

    port = free_port()
    orthanc.put("/modalities/segnode2", {"AET": "SEGNODE", "Host": "127.0.0.1", "Port": port})
    second = SegNode(stack.tmp / "segnode2", port, orthanc.dicom_port)
    try:
        second.start()
        [found] = orthanc.lookup(str(source.SeriesInstanceUID))
        series_id = str(found["ID"])
        orthanc.store_to("segnode2", series_id)
        job_id = job_of_series(second, str(source.SeriesInstanceUID))
        wait_for_state(second, job_id, {JobState.segmenting})
        second.kill()
        assert JobState(second.job(job_id).state) is JobState.segmenting
        second.start()
        wait_for_state(second, job_id, {JobState.done})
    finally:
        second.stop()
        second.close()
    assert len(second.node_events("node_started")) == 2
    moves = [str(e.detail).split(":")[0] for e in second.events(job_id, "job_transition")]
    assert moves == [
        "queued -> converting",
        "converting -> segmenting",
        "segmenting -> encoding",
        "encoding -> sending",
        "sending -> done",
    ]
    assert "resumes at segmenting" in second.log_text()
    [again] = second.outputs(job_id)["seg"]
    assert (again["series_instance_uid"], again["sop_instance_uid"]) == (
        first_output["series_instance_uid"],
        first_output["sop_instance_uid"],
    )
    assert seg_instances_of_sagittal() == [
        (first_output["series_instance_uid"], first_output["sop_instance_uid"])
    ]
