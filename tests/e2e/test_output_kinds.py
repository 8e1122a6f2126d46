"""End to end, every output kind: a route asks for the SEG, the volumetry SR, the overlay series and the
RTSTRUCT, and sends them to two real peers: Orthanc, which takes every kind, and a planning system played
by DCMTK's ``storescp`` whose presentation contexts leave out RT Structure Set Storage (``-xf`` with a
configuration written by the test).

Orthanc gets all four kinds in the source's study, each valid for dciodvfy. At the storescp, the SEG, SR
and overlay are delivered and the RTSTRUCT fails on its own (the job fails in sending, naming that
delivery); once the planning system accepts RT Structure Sets, ``segnode jobs retry`` sends the RTSTRUCT
alone, and a resend to Orthanc replaces its objects instead of adding copies (UIDs are derived).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.jobs.store import JobState
from dicom_node.outputs.validation import validate_with_dciodvfy
from tests.support.cli import run_segnode
from tests.support.dcmtk import StoreSCP, storescp
from tests.support.orthanc import Orthanc
from tests.support.paths import T2_SAG, series_files
from tests.support.series import header
from tests.support.serve import SegNode, orthanc_and_segnode

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KINDS = ["seg", "sr", "overlay", "rtstruct"]
SOP_CLASSES = {
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",
    "overlay": "1.2.840.10008.5.1.4.1.1.7",
    "rtstruct": "1.2.840.10008.5.1.4.1.1.481.3",
}

#: storescp's presentation contexts of a peer without RT Structure Set Storage.
NO_RTSTRUCT_CFG = """\
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[[PresentationContexts]]
[NoRtstruct]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = SegmentationStorage\\Uncompressed
PresentationContext3 = Comprehensive3DSRStorage\\Uncompressed
PresentationContext4 = SecondaryCaptureImageStorage\\Uncompressed
[[Profiles]]
[NoRtstruct]
PresentationContexts = NoRtstruct
"""


@dataclass
class Run:
    orthanc: Orthanc
    node: SegNode
    tps: StoreSCP
    #: Stops the storescp.
    peers: contextlib.ExitStack
    job_id: int
    source: pydicom.Dataset
    tmp: Path

    def files(self, kind: str) -> list[Path]:
        """The outbox files of one kind."""
        outputs = self.node.outputs(self.job_id)
        if kind == "seg":
            names = [o["file"] for o in outputs["seg"]]
        else:
            names = [n for o in outputs["derived"] if o["kind"] == kind for n in o["files"]]
        return [self.node.folder / "outbox" / str(self.job_id) / n for n in names]

    def deliveries(self) -> dict[tuple[str, str], Any]:
        return {(d.destination, d.kind): d for d in self.node.deliveries(self.job_id)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("kinds")
    config = tmp / "no-rtstruct.cfg"
    config.write_text(NO_RTSTRUCT_CFG)
    with contextlib.ExitStack() as peers:
        tps = peers.enter_context(storescp(tmp / "tps", "-xf", str(config), "NoRtstruct", ae_title="TPS"))
        route = {
            "name": "mr_all_kinds",
            "match": {"modality": "MR", "calling_ae_title": "ORTHANC"},
            "action": {"tasks": ["total_mr"], "outputs": KINDS, "destinations": ["orthanc", "tps"]},
        }
        keys = {
            "routes": [route],
            "destinations.tps": {
                "ae_title": "TPS",
                "host": "127.0.0.1",
                "port": tps.port,
                "retry": {"initial_delay_s": 0.5, "factor": 1.5, "max_delay_s": 1.0, "max_attempts": 2},
            },
        }
        with orthanc_and_segnode(tmp, **keys) as (orthanc, node):
            source = header(T2_SAG)
            orthanc.store_to("segnode", orthanc.upload(series_files(T2_SAG)))
            job_id = node.wait_for_job(str(source.SeriesInstanceUID))
            node.wait_for_state(job_id, {JobState.failed})
            yield Run(orthanc, node, tps, peers, job_id, source, tmp)


def in_orthanc(run: Run, path: Path) -> pydicom.Dataset:
    """The instance Orthanc holds with the SOP Instance UID of an outbox file."""
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    [found] = [r for r in run.orthanc.lookup(uid) if r["Type"] == "Instance"]
    return pydicom.dcmread(io.BytesIO(run.orthanc.instance_file(str(found["ID"]))))


def test_a_route_with_all_four_outputs_sends_all_four_to_orthanc_in_the_sources_study(run: Run) -> None:
    deliveries = run.deliveries()
    assert {kind: deliveries["orthanc", kind].state for kind in KINDS} == dict.fromkeys(KINDS, "delivered")
    slices = len(series_files(T2_SAG))
    assert [len(run.files(kind)) for kind in KINDS] == [1, 1, slices, 1]
    for kind in KINDS:
        for n, path in enumerate(run.files(kind)):
            ds = in_orthanc(run, path)
            assert ds.SOPClassUID == SOP_CLASSES[kind]
            assert ds.StudyInstanceUID == run.source.StudyInstanceUID
            assert ds.PatientID == run.source.PatientID
            if kind != "overlay" or n in (0, slices // 2, slices - 1):
                received = run.tmp / f"orthanc-{kind}-{n}.dcm"
                ds.save_as(received, enforce_file_format=True)
                validate_with_dciodvfy(received)  # raises on any dciodvfy error
    [seg] = run.files("seg")
    seg_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
    [sr_file] = run.files("sr")
    sr = pydicom.dcmread(sr_file)
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg_uid in evidence


def test_a_kind_the_peer_refuses_fails_alone_and_is_retried_alone(run: Run) -> None:
    deliveries = run.deliveries()
    assert {kind: deliveries["tps", kind].state for kind in KINDS} == {
        "seg": "delivered",
        "sr": "delivered",
        "overlay": "delivered",
        "rtstruct": "failed",
    }
    refused = deliveries["tps", "rtstruct"]
    assert refused.last_outcome == "no_accepted_context"
    assert SOP_CLASSES["rtstruct"] in (refused.last_status or "")
    job = run.node.job(run.job_id)
    assert (job.failed_stage, job.reason) == ("sending", "no_accepted_context")
    assert "tps (rtstruct)" in (job.detail or "")
    received = sorted(p.name for p in run.tps.folder.iterdir())
    assert len(received) == 2 + len(series_files(T2_SAG)), received  # SEG, SR and the overlay images

    # the planning system now takes RT Structure Sets: a retry sends the RTSTRUCT alone
    run.peers.close()
    with storescp(run.tmp / "tps-again", ae_title="TPS", port=run.tps.port) as again:
        retried = run_segnode("jobs", "retry", str(run.job_id), "--config", str(run.node.config_path))
        assert retried.returncode == 0, retried.stderr
        assert retried.stdout.strip() == f"job {run.job_id}: sending again to tps (rtstruct)"
        run.node.wait_for_state(run.job_id, {JobState.done})
        [only] = list(again.folder.iterdir())
        assert pydicom.dcmread(only, stop_before_pixels=True).SOPClassUID == SOP_CLASSES["rtstruct"]
    after = run.deliveries()
    assert {d.state for d in after.values()} == {"delivered"}
    assert {k: d.last_attempt_at for k, d in after.items() if k != ("tps", "rtstruct")} == {
        k: d.last_attempt_at for k, d in deliveries.items() if k != ("tps", "rtstruct")
    }

    # a resend to Orthanc replaces its objects (same UIDs) instead of adding copies
    study = run.orthanc.lookup(str(run.source.StudyInstanceUID))
    [study_id] = [r["ID"] for r in study if r["Type"] == "Study"]
    count = len(run.orthanc.get(f"/studies/{study_id}/instances"))
    resent = run_segnode(
        "jobs", "resend", str(run.job_id), "--destination", "orthanc", "--config", str(run.node.config_path)
    )
    assert resent.returncode == 0, resent.stderr
    run.node.wait_for_state(run.job_id, {JobState.done})
    again_sent = run.deliveries()
    assert all(again_sent["orthanc", k].last_attempt_at > after["orthanc", k].last_attempt_at for k in KINDS)
    assert again_sent["tps", "seg"].last_attempt_at == after["tps", "seg"].last_attempt_at
    assert len(run.orthanc.get(f"/studies/{study_id}/instances")) == count
