"""The PACS is unreachable for a long time (an outage of hours, compressed by the retry configuration): the
result waits in the outbox, attempts back off with growing gaps, nothing is dropped, and the SEG is
delivered once Orthanc is back. Real Orthanc, real ``segnode serve`` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.jobs.store import JobState
from tests.support import audit
from tests.support.orthanc import Orthanc
from tests.support.paths import T2_SAG
from tests.support.series import renamed_series
from tests.support.serve import SegNode, orthanc_and_segnode
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOB_TIMEOUT_S = 900
#: 1 s, 2 s, 4 s, 8 s, 8 s ...: the shape of a clinical policy (30 s doubling to 30 min, 24 h budget)
#: scaled down; the budget (max_total_s) is far longer than the outage, as in production.
RETRY = {"initial_delay_s": 1.0, "factor": 2.0, "max_delay_s": 8.0, "max_total_s": 3600.0}
FAILED_ATTEMPTS = 5


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Orthanc, SegNode]]:
    keys = {"destinations.orthanc.retry": RETRY}
    with orthanc_and_segnode(tmp_path, hold=["encoding"], fast=True, **keys) as pair:
        yield pair


def test_a_long_pacs_outage_backs_off_keeps_the_result_and_delivers_when_the_pacs_returns(
    tmp_path: Path, stack: tuple[Orthanc, SegNode]
) -> None:
    orthanc, node = stack
    series = renamed_series(T2_SAG, tmp_path / "series", "pacs-outage")
    orthanc.store_to("segnode", orthanc.upload(series.files))
    held = node.wait_held("encoding")  # the result is not ready yet ...
    [job] = audit.jobs(node.db, series.series_instance_uid)
    assert job.id == held
    orthanc.stop()  # ... when the PACS goes away
    try:
        node.release("encoding", job.id)

        def failures() -> int:
            return len([e for e in node.events(job.id, "send_attempt") if e.outcome == "failure"])

        wait_until(lambda: failures() >= FAILED_ATTEMPTS, JOB_TIMEOUT_S, f"{FAILED_ATTEMPTS} failed attempts")
        # the result waits: job in sending, delivery pending, the SEG in the outbox
        assert JobState(node.job(job.id).state) is JobState.sending
        [delivery] = node.deliveries(job.id)
        assert delivery.state == "pending" and delivery.next_attempt_at is not None
        [output] = node.outputs(job.id)["seg"]
        assert (node.folder / "outbox" / str(job.id) / output["file"]).is_file()
    finally:
        orthanc.start()
    wait_until(lambda: JobState(node.job(job.id).state) is JobState.done, JOB_TIMEOUT_S, "delivery")

    attempts = node.events(job.id, "send_attempt")
    assert [e.outcome for e in attempts[:-1]] == ["failure"] * (len(attempts) - 1)
    assert attempts[-1].outcome == "success" and len(attempts) > FAILED_ATTEMPTS
    assert {e.reason for e in attempts[:-1]} == {"peer_unreachable"}
    # back-off: the gaps between attempts grow (1, 2, 4, 8 s) up to the cap
    gaps = [
        (b.at - a.at).total_seconds() for a, b in zip(attempts, attempts[1:FAILED_ATTEMPTS], strict=False)
    ]
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[0] >= RETRY["initial_delay_s"] and max(gaps) >= 4.0, gaps
    [delivery] = node.deliveries(job.id)
    assert (delivery.state, delivery.attempts) == ("delivered", len(attempts))
    # nothing dropped, nothing duplicated: exactly the one SEG the node encoded
    [output] = node.outputs(job.id)["seg"]
    assert orthanc.seg_instances(series.study_instance_uid, series.series_instance_uid) == [
        (output["series_instance_uid"], output["sop_instance_uid"])
    ]
