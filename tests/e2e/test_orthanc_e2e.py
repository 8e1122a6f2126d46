"""End to end with a real PACS: Orthanc sends MRI series to a real ``segnode serve`` process, which segments
them with the tiny test models and sends the DICOM-SEG back to Orthanc.

Orthanc (Debian package) and SegNode run on loopback ports with their own configurations and folders; the
tests drive Orthanc through its REST API and read SegNode's audit database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from conversion import load_series
from dicom_node.jobs.store import JobState
from tests.support.cli import run_segnode
from tests.support.orthanc import Orthanc
from tests.support.paths import PD_TRA, T2_SAG, TEST_MRI, series_files
from tests.support.ports import free_port
from tests.support.series import header
from tests.support.serve import SegNode, orthanc_and_segnode
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Stack:
    orthanc: Orthanc
    segnode: SegNode
    tmp: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    with orthanc_and_segnode(tmp) as (orthanc, segnode):
        yield Stack(orthanc, segnode, tmp)


def test_orthanc_sends_a_series_and_gets_the_seg_back_in_the_same_study(stack: Stack) -> None:
    orthanc, node = stack.orthanc, stack.segnode
    source = header(T2_SAG)
    orthanc.store_to("segnode", orthanc.upload(series_files(T2_SAG)))
    job_id = node.wait_for_job(str(source.SeriesInstanceUID))
    node.wait_for_state(job_id, {JobState.done})

    [series] = orthanc.find_series(str(source.StudyInstanceUID), "SEG")
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
    [volume] = load_series(series_files(T2_SAG))
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
    shown = run_segnode("jobs", "show", str(job_id), "--format", "json", "--config", str(node.config_path))
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
    listed = run_segnode("jobs", "list", "--config", str(node.config_path))
    assert listed.returncode == 0 and re.search(rf"^{job_id}\s+done\s+.*mr_total", listed.stdout, re.M)


def test_a_stopped_orthanc_gets_the_seg_once_it_is_back_and_the_audit_log_shows_each_try(
    stack: Stack,
) -> None:
    """Orthanc goes away while the job is held at the start of encoding (the node's test-only hold), so
    that every send attempt meets a stopped PACS until Orthanc is back."""
    orthanc, node = stack.orthanc, stack.segnode
    source = header(PD_TRA)
    node.stop()
    node.start(hold=["encoding"])
    try:
        orthanc.store_to("segnode", orthanc.upload(series_files(PD_TRA)))
        job_id = node.wait_held("encoding")
        assert job_id == node.wait_for_job(str(source.SeriesInstanceUID))
        orthanc.stop()
        try:
            node.release("encoding", job_id)

            def failures() -> int:
                return len([e for e in node.events(job_id, "send_attempt") if e.outcome == "failure"])

            wait_until(lambda: failures() >= 2, 300, "two failed send attempts", details=node.log_tail)
            assert JobState(node.job(job_id).state) is JobState.sending
        finally:
            orthanc.start()
        node.wait_for_state(job_id, {JobState.done})
    finally:
        node.stop()
        node.start()  # as the other tests of the module expect it: without holds
    tries = node.events(job_id, "send_attempt")
    assert [e.outcome for e in tries[:-1]] == ["failure"] * (len(tries) - 1) and tries[
        -1
    ].outcome == "success"
    assert {e.reason for e in tries[:-1]} == {"peer_unreachable"}
    assert all("next attempt at" in (e.detail or "") for e in tries[:-1])
    [delivery] = node.deliveries(job_id)
    assert (delivery.state, delivery.attempts) == ("delivered", len(tries))
    [output] = node.outputs(job_id)["seg"]
    assert orthanc.seg_instances(str(source.StudyInstanceUID), str(source.SeriesInstanceUID)) == [
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
        return orthanc.seg_instances(study, str(source.SeriesInstanceUID))

    assert seg_instances_of_sagittal() == [
        (first_output["series_instance_uid"], first_output["sop_instance_uid"])
    ]

    port = free_port()
    orthanc.put("/modalities/segnode2", {"AET": "SEGNODE", "Host": "127.0.0.1", "Port": port})
    second = SegNode(stack.tmp / "segnode2", port, orthanc.dicom_port)
    try:
        second.start(hold=["segmenting"])
        [found] = orthanc.lookup(str(source.SeriesInstanceUID))
        series_id = str(found["ID"])
        orthanc.store_to("segnode2", series_id)
        job_id = second.wait_held("segmenting")
        assert job_id == second.wait_for_job(str(source.SeriesInstanceUID))
        second.kill()
        assert JobState(second.job(job_id).state) is JobState.segmenting
        second.start()  # without the hold
        second.wait_for_state(job_id, {JobState.done})
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


#: Source faults of real exports (tests/dicom_node/source_faults.py) injected together into one copy of a
#: classic and of an Enhanced MR series of tests/data.
E2E_FAULTS = {
    PD_TRA: (
        "study_id_of_20_characters",
        "species_without_neutered_status",
        "latin_1_name_without_character_set",
        "study_time_with_colons",
        "study_description_of_70_characters",
        "patient_sex_not_enumerated",
    ),
    TEST_MRI / "dcm_qa_enh" / "Siemens_XA10_EnhancedMR_4vol": (
        "utf_8_name_declared_latin_1",
        "accession_number_of_17_characters",
        "type_2_attributes_missing",
    ),
}


@pytest.mark.parametrize("folder", list(E2E_FAULTS), ids=["classic_mr", "enhanced_mr"])
def test_series_with_broken_source_headers_get_a_valid_seg_in_their_study(stack: Stack, folder: Path) -> None:
    """Orthanc -> SegNode -> Orthanc with headers that break the standard (each copy has its own Series and
    SOP Instance UIDs, in the source's study; of the Enhanced MR series one file, one volume): the job ends
    done, the SEG Orthanc holds lies in the study, references the faulty series, passes dciodvfy, and the
    audit lists the corrections by keyword."""
    from dicom_node.outputs.validation import validate_with_dciodvfy
    from tests.dicom_node.source_faults import FAULTS, SourceFault, both, faulty_copy

    chosen = [f for f in FAULTS if f.name in E2E_FAULTS[folder]]
    fault = SourceFault(
        f"e2e_{folder.name}",
        "several faults of real exports in one series",
        both(*(f.mutate for f in chosen)),
        {k: v for f in chosen for k, v in f.expected.items()},
    )
    originals = series_files(folder)[:1] if folder != PD_TRA else series_files(folder)
    files = faulty_copy(originals, fault, stack.tmp / fault.name)
    orthanc, node = stack.orthanc, stack.segnode
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    orthanc.store_to("segnode", orthanc.upload(files))
    job_id = node.wait_for_job(str(source.SeriesInstanceUID))
    node.wait_for_state(job_id, {JobState.done})

    [output] = node.outputs(job_id)["seg"]
    assert orthanc.seg_instances(str(source.StudyInstanceUID), str(source.SeriesInstanceUID)) == [
        (output["series_instance_uid"], output["sop_instance_uid"])
    ]
    [found] = orthanc.lookup(output["sop_instance_uid"])
    path = stack.tmp / f"{fault.name}.seg.dcm"
    path.write_bytes(orthanc.instance_file(str(found["ID"])))
    validate_with_dciodvfy(path)
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    [event] = node.events(job_id, "source_attributes_corrected")
    listed = dict(line.split(": ", 1) for line in (event.detail or "").split("; "))
    for keyword, words in fault.expected.items():
        assert words in listed.get(keyword, ""), (keyword, listed)
    if folder == PD_TRA:
        assert (seg.SpecificCharacterSet, str(seg.PatientName)) == ("ISO_IR 100", "Müller^Jürgen")
        assert seg.StudyID == "" and seg.PatientSex == "" and seg.PatientSexNeutered == ""
    else:
        assert (seg.SpecificCharacterSet, str(seg.PatientName)) == ("ISO_IR 192", "Wałęsa^Łukasz")
        assert seg.AccessionNumber == "" and "StudyTime" in seg
