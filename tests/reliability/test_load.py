"""Load: 4 concurrent associations send 4 different series to a real ``segnode serve`` (limit: 4
associations) while its pipeline works; a fifth association is refused with A-ASSOCIATE-RJ (rejected-
transient, service-provider presentation, local-limit-exceeded). Every instance is stored, every job ends
done, the node's resident memory stays bounded (the pipeline's queues are bounded, ``pipeline.queue_size``),
and the SEG of each series reaches Orthanc."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom.association import Association

from dicom_node.jobs.store import JobState
from dicom_node.receiving import statuses as status
from tests.support import audit
from tests.support.audit import spooled
from tests.support.orthanc import Orthanc
from tests.support.paths import PD_TRA, T2_COR, T2_SAG
from tests.support.scu import StoreLog, associate, rejection, store
from tests.support.series import renamed_series
from tests.support.serve import SegNode, orthanc_and_segnode
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),  # the cardiac series' leading-zero UIDs
]

JOB_TIMEOUT_S = 1800
ASSOCIATIONS = 4
#: Resident memory the node may reach with the tiny models loaded and four series in flight.
RSS_LIMIT_MIB = 4096


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Orthanc, SegNode]]:
    keys = {
        "network.max_associations": ASSOCIATIONS,
        "completion.quiet_period_s": 600,  # complete on release only: the slow senders pause mid-series
        "pipeline.queue_size": 1,
    }
    with orthanc_and_segnode(tmp_path, hold=["segmenting"], fast=True, **keys) as pair:
        yield pair


def test_four_concurrent_associations_while_jobs_run_store_everything_and_the_fifth_is_refused(
    tmp_path: Path, stack: tuple[Orthanc, SegNode]
) -> None:
    orthanc, node = stack
    assert node.process is not None
    pid = node.process.pid
    # four series of their own (two are copies of the sagittal one with other UIDs); the cardiac series of
    # the test data cannot be used here: each of its slices has its own Frame of Reference, so its job
    # fails at encoding (inconsistent_frame_of_reference), as it should
    sources = [T2_SAG, PD_TRA, T2_SAG, T2_COR]
    series = [renamed_series(s, tmp_path / f"s{n}", f"load-{n}") for n, s in enumerate(sources)]
    logs = [StoreLog() for _ in series]
    go = threading.Event()
    errors: list[BaseException] = []
    rss: list[float] = [rss_mib(pid)]

    def established(files: list[Path]) -> Association:
        """An association, retrying a transient rejection as a PACS does (the slot of an association that
        has just ended, such as the start-up C-ECHO, may still be held for a moment)."""

        def attempt() -> Association | None:
            assoc = associate(node.port, "ORTHANC", files=files)
            return assoc if assoc.is_established else None

        result: Association = wait_until(attempt, 60, "an association", interval_s=0.5)
        return result

    # four associations open at the same time ...
    associations = [established(item.files) for item in series]
    unpaced = series[ASSOCIATIONS - 1]
    #: What the three paused associations saw of the unpaced series' job halfway through their series.
    seen_while_receiving: list[set[str]] = []

    def sender(index: int) -> None:
        try:
            go.wait(60)
            files, assoc = series[index].files, associations[index]
            if index == ASSOCIATIONS - 1:
                store(assoc, files, logs[index])  # the unpaced series: sent at once, its job starts ...
            else:
                half = len(files) // 2
                store(assoc, files[:half], logs[index])
                # ... and works (held in segmenting) while this association is still sending
                node.wait_held("segmenting")
                jobs = audit.jobs(node.db, unpaced.series_instance_uid)
                seen_while_receiving.append({j.state for j in jobs})
                store(assoc, files[half:], logs[index])
            assoc.release()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(ASSOCIATIONS)]
    for thread in threads:
        thread.start()
    # ... so a fifth is refused
    fifth = associate(node.port, "ORTHANC", files=series[0].files)
    assert rejection(fifth) == (
        status.REJECTED_TRANSIENT,
        status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
        status.REASON_LOCAL_LIMIT_EXCEEDED,
    )
    go.set()
    for thread in threads:
        while thread.is_alive():
            rss.append(rss_mib(pid))
            thread.join(0.3)
    assert not errors, errors
    # the unpaced series' job was working while the three other associations were still sending
    assert seen_while_receiving == [{"segmenting"}] * (ASSOCIATIONS - 1), seen_while_receiving
    for item in series:  # every job may go on (a job not held yet passes its hold at once)
        node.release("segmenting", node.wait_for_job(item.series_instance_uid))

    # every instance stored: Success for each, recorded, in the spool with the recorded digest
    for item, log in zip(series, logs, strict=True):
        assert log.successes == item.sop_instance_uids, log.statuses
        assert all(spooled(node.db, node.folder / "spool", item.sop_instance_uids).values())

    def all_ended() -> bool:
        rss.append(rss_mib(pid))
        states = [[JobState(j.state) for j in audit.jobs(node.db, s.series_instance_uid)] for s in series]
        return all(len(s) == 1 and s[0] in (JobState.done, JobState.failed) for s in states)

    wait_until(all_ended, JOB_TIMEOUT_S, "every job to end", interval_s=1.0)
    for item in series:
        [job] = audit.jobs(node.db, item.series_instance_uid)
        assert (job.state, job.reason) == ("done", None), (job.reason, job.detail)
        [output] = node.outputs(job.id)["seg"]
        assert orthanc.seg_instances(item.study_instance_uid, item.series_instance_uid) == [
            (output["series_instance_uid"], output["sop_instance_uid"])
        ]
    # the rejection is in the audit log
    rejected = node.node_events("association_rejected")
    assert rejected and {e.reason for e in rejected} == {"local_limit_exceeded"}
    assert max(rss) < RSS_LIMIT_MIB, f"peak RSS {max(rss):.0f} MiB"
