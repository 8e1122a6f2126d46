"""Broken source headers still give a valid result: the fault corpus (source_faults.py) through the real node.

Each fault is a copy of a real series (8 contiguous transverse slices of ProstateX, tests/data) with its own
Series and SOP Instance UIDs. Every copy is C-STOREd to a real SCP, completed, converted, segmented with the
tiny nnU-Net models (total_mr fast: the 3 mm model), encoded as a SEG, validated by dciodvfy
(``seg.validate_with_dciodvfy: always``) and sent to DCMTK's storescp, all by the node's own pipeline
threads. Then, for each fault: the job is ``done``, the delivered SEG passes dciodvfy again, lies in the
source's study, reads back with highdicom voxel for voxel as the label map, and the job's one
``source_attributes_corrected`` audit event lists the corrections (keyword and rule, never the value).
Faults that cannot be corrected fail the job with a reason naming the attribute.

The copies differ only in their headers: their voxels and geometry are the same, so the engine's result is the
same for all of them. The real engine runs once per distinct input (:class:`OnceEngine`, keyed by the voxels,
the affine and the task); every job still goes through every stage of the pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from sqlalchemy import select

from config.inference import InferenceConfig
from config.loader import parse_config
from config.model import SegNodeConfig
from conversion import load_series
from dicom_node.audit.tables import Association, Job
from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.records import label_maps
from dicom_node.jobs.store import JobState
from dicom_node.jobs.workers import Pipeline
from dicom_node.outputs.validation import validate_with_dciodvfy
from dicom_node.service import NodeService
from inference.engine import Engine
from tests.dicom_node.source_faults import FAULTS, SourceFault, faulty_copy
from tests.support import audit
from tests.support.dcmtk import storescp
from tests.support.paths import MODELS, PD_TRA, series_files
from tests.support.scu import send_series
from tests.support.settings import local_pipeline, node_settings
from tests.support.waiting import wait_until

#: The middle 8 of the 16 slices (contiguous): half the instances, frames and validation time of the whole
#: series, and the tiny models still find structures in them.
SLICES = slice(4, 12)
CORRECTABLE = [f for f in FAULTS if f.refused is None]
REFUSED = [f for f in FAULTS if f.refused is not None]
#: Every ProstateX copy lacks Referring Physician's Name (removed by its anonymisation).
BASELINE = {"ReferringPhysicianName": "missing -> added empty (Type 2)"}


class OnceEngine:
    """The real engine, run once per distinct input (voxels, affine, task and options)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.results: dict[str, Any] = {}

    def segment(self, voxels: npt.NDArray[Any], affine_lps: npt.NDArray[np.float64], **options: Any) -> Any:
        key = hashlib.sha256(
            np.ascontiguousarray(voxels).tobytes() + np.asarray(affine_lps).tobytes() + repr(options).encode()
        ).hexdigest()
        if key not in self.results:
            self.results[key] = self.engine.segment(voxels, affine_lps, **options)
        return self.results[key]


@dataclass
class Run:
    ctx: PipelineContext
    jobs: dict[str, int]
    copies: dict[str, list[Path]]
    received: dict[str, Path]
    engine: OnceEngine
    #: Every log record of the node during the run (INFO and above).
    log: list[str]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collected_log() -> Iterator[list[str]]:
    root = logging.getLogger()
    handler, level = _Collect(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler.messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _receive_all(service: NodeService, copies: dict[str, list[Path]]) -> dict[str, int]:
    """C-STORE every faulty copy (one association each) and complete the series; fault name -> job id.

    Each series is completed once its association has ended, with the completer's clock past the quiet
    period: the node records a release that races the closing connection as an abort (reported), and
    completion on release would then wait for the quiet period."""
    jobs: dict[str, int] = {}
    for name, files in copies.items():
        assert send_series(service.port, files) == [0x0000] * len(files), name

        def ended() -> bool:
            with service.db.read() as session:
                last = session.scalars(select(Association.result).order_by(Association.id.desc())).first()
                return last in ("released", "aborted")

        wait_until(ended, 120, f"the association of {name} recorded as ended")
        [job] = service.completer.run_once(datetime.now(UTC) + timedelta(days=1))
        jobs[name] = job.id
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("faults")
    files = series_files(PD_TRA)[SLICES]
    copies = {f.name: faulty_copy(files, f, tmp / "copies" / f.name) for f in FAULTS}
    engine = OnceEngine(Engine(InferenceConfig(weights_dir=MODELS, device="cpu")))
    with storescp(tmp / "pacs", "--bit-preserving") as pacs, _collected_log() as log:
        data = node_settings(tmp)
        data["completion"] = {"quiet_period_s": 3600, "on_association_release": True}
        data["destinations"] = {"pacs": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs.port}}
        data["routes"] = [
            {
                "name": "mr",
                "match": {"modality": "MR"},
                "action": {
                    "tasks": [{"name": "total_mr", "fast": True}],
                    "outputs": ["seg"],
                    "destinations": ["pacs"],
                },
            }
        ]
        data |= local_pipeline(tmp)
        data["seg"] = {"validate_with_dciodvfy": "always"}
        config = parse_config(data, "test.yaml", environ={})
        service = NodeService(config, completion_interval_s=0, process_jobs=False)
        service.start()
        ctx = PipelineContext.create(config, service.audit, service.jobs)
        pipeline = Pipeline(ctx, engine_factory=lambda: engine)
        try:
            jobs = _receive_all(service, copies)
            pipeline.start()
            pipeline.wake()
            ended = (JobState.done, JobState.failed)
            wait_until(
                lambda: all(ctx.jobs.get(j).state in ended for j in jobs.values()), 1800, "every job ended"
            )
        finally:
            pipeline.stop()
            service.stop()
    received = {}
    for path in sorted((tmp / "pacs").iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        received[str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)] = path
    yield Run(ctx, jobs, copies, received, engine, log)


def _injected_text(fault: SourceFault, copy: Path) -> list[str]:
    """Values the fault wrote that must not appear in the audit (longer than 3 characters)."""
    original = pydicom.dcmread(series_files(PD_TRA)[SLICES][0], stop_before_pixels=True)
    faulty = pydicom.dcmread(copy, stop_before_pixels=True)
    out = []
    for element in faulty:
        if element.tag.is_private or element.VR == "SQ" or element.tag in (0x0020000E, 0x00080018):
            continue
        before = original.get(element.tag)
        if before is None or before.value != element.value:
            text = str(element.value).strip()
            if len(text) > 3:
                out.append(text)
    return out


def test_the_engine_ran_once_for_the_one_distinct_input(run: Run) -> None:
    assert len(run.engine.results) == 1


@pytest.mark.parametrize("fault", CORRECTABLE, ids=[f.name for f in CORRECTABLE])
def test_a_correctable_fault_gives_a_valid_seg_in_the_sources_study(run: Run, fault: SourceFault) -> None:
    ctx, job_id = run.ctx, run.jobs[fault.name]
    job = ctx.jobs.get(job_id)
    assert (job.state, job.reason) == (JobState.done, None), job
    source = pydicom.dcmread(run.copies[fault.name][0], stop_before_pixels=True)
    path = run.received[str(source.SeriesInstanceUID)]

    report = validate_with_dciodvfy(path)  # again, on what the destination received
    assert report.validator_gaps == []
    seg = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert not any(element.tag.is_private for element in seg)

    # voxel for voxel: the SEG read back with highdicom is the label map of the segmentation stage
    [record] = label_maps(ctx.jobs, job_id)
    label_map = np.load(ctx.work_dir(job_id) / record.file)
    [volume] = load_series(run.copies[fault.name])
    uids = [ref.sop_instance_uid for ref in volume.slice_refs]
    frames = hd.seg.segread(path).get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    present = [int(v) for v in np.unique(label_map) if v != 0]
    lut = np.zeros(max(present) + 1, dtype=np.uint8)
    lut[1 : len(present) + 1] = present
    np.testing.assert_array_equal(lut[frames].transpose(2, 1, 0), label_map)

    # one audit event lists every correction by keyword and rule, never a value
    [event] = audit.events(ctx.db, "source_attributes_corrected", job_id=job_id)
    listed = dict(line.split(": ", 1) for line in (event.detail or "").split("; "))
    for keyword, words in {**BASELINE, **fault.expected}.items():
        assert keyword in listed and words in listed[keyword], (keyword, listed)
    assert set(listed) == set(BASELINE) | set(fault.expected), listed
    for text in _injected_text(fault, run.copies[fault.name][0]):
        assert text not in (event.detail or ""), text


@pytest.mark.parametrize("fault", REFUSED, ids=[f.name for f in REFUSED])
def test_a_fault_that_cannot_be_corrected_fails_the_job_naming_the_attribute(
    run: Run, fault: SourceFault
) -> None:
    job = run.ctx.jobs.get(run.jobs[fault.name])
    assert (job.state, job.failed_stage, job.reason) == (
        JobState.failed,
        JobState.encoding,
        "source_attribute_invalid",
    )
    with run.ctx.db.read() as session:
        detail = session.get_one(Job, job.id).detail or ""
    names = {
        "FrameOfReferenceUID": "Frame of Reference UID (0020,0052)",
        "StudyInstanceUID": "Study Instance UID (0020,000D)",
    }
    assert f"the source's {names[str(fault.refused)]} not a valid UI value" in detail
    assert "send the series again" in detail
    assert not audit.events(run.ctx.db, "source_attributes_corrected", job_id=job.id)
    source = pydicom.dcmread(run.copies[fault.name][0], stop_before_pixels=True)
    assert str(source.SeriesInstanceUID) not in run.received


def test_no_name_or_birth_date_of_the_faulty_headers_reaches_the_log(run: Run) -> None:
    """Corrections are logged by keyword and rule; the values (names, birth dates) are not."""
    assert any("attribute(s) of series" in m and "corrected for the SEG" in m for m in run.log)
    values = ["Müller", "Wałęsa", "Łukasz", "Mustermann", "Doe^Jane", "Gößling", "Smith^John", "00000000"]
    leaked = [(v, m) for m in run.log for v in values if v in m]
    assert leaked == []


def test_an_instance_without_series_instance_uid_is_refused_at_reception(
    tmp_path: Path, make_config: Callable[..., SegNodeConfig], start_node: Callable[..., NodeService]
) -> None:
    """No Series Instance UID: nothing can place the instance (nor a SEG of it) in a series. The SCP refuses
    it with 0xC210 and the reason (conformance statement 3.1.4); nothing is stored."""
    node = start_node(make_config())
    ds = pydicom.dcmread(series_files(PD_TRA)[0])
    del ds.SeriesInstanceUID
    ds.save_as(tmp_path / "no_series.dcm")
    assert send_series(node.port, [tmp_path / "no_series.dcm"]) == [0xC210]
    [refused] = audit.events(node.db, "instance_refused")
    assert "Series Instance UID is missing" in (refused.reason or "")
    assert list((tmp_path / "spool").rglob("*.dcm")) == []
