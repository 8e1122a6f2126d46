"""Load: 4 concurrent associations send 4 different series to a real ``segnode serve`` (limit: 4
associations) while its pipeline works; a fifth association is refused with A-ASSOCIATE-RJ (rejected-
transient, service-provider presentation, local-limit-exceeded). Every instance is stored, every job ends
done, the node's resident memory stays bounded (the pipeline's queues are bounded, ``pipeline.queue_size``),
and the SEG of each series reaches Orthanc."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from orthanc_server import Orthanc
from pynetdicom.association import Association
from reliability_support import (
    PD_TRA,
    T2_COR,
    T2_SAG,
    StoreLog,
    associate,
    jobs_of,
    orthanc_and_segnode,
    renamed_series,
    seg_instances_of,
    spooled,
    store,
)
from segnode_process import SegNode, wait_until

from dicom_node.jobs.store import JobState
from dicom_node.receiving import statuses as status

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
        "completion.quiet_period_s": 5,
        "pipeline.queue_size": 1,
    }
    with orthanc_and_segnode(tmp_path, **keys) as pair:
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
        """An association, retrying a transient rejection or an abort as a PACS does (the connection probe
        of the node's start-up, or a rejected attempt, may hold a slot for a moment)."""
        for _attempt in range(60):
            assoc = associate(node.port, "ORTHANC", files=files)
            if assoc.is_established:
                return assoc
            time.sleep(0.5)
        raise AssertionError("no association within 30 s")

    # four associations open at the same time ...
    associations = [established(item.files) for item in series]

    def sender(index: int) -> None:
        try:
            go.wait(60)
            # the last series (15 instances) comes at full speed, so its job runs while the other three
            # associations are still sending theirs, paced as modalities send
            pause = 0.0 if index == ASSOCIATIONS - 1 else 0.3
            store(associations[index], series[index].files, logs[index], pause_s=pause)
            associations[index].release()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(ASSOCIATIONS)]
    for thread in threads:
        thread.start()
    # ... so a fifth is refused
    fifth = associate(node.port, "ORTHANC", files=series[0].files)
    assert fifth.is_rejected
    rj = fifth.acceptor.primitive
    assert rj is not None
    assert (rj.result, rj.result_source, rj.diagnostic) == (
        status.REJECTED_TRANSIENT,
        status.SOURCE_SERVICE_PROVIDER_PRESENTATION,
        status.REASON_LOCAL_LIMIT_EXCEEDED,
    )
    go.set()
    working_while_receiving: set[str] = set()
    for thread in threads:
        while thread.is_alive():
            rss.append(rss_mib(pid))
            if threads[0].is_alive():
                working_while_receiving |= {
                    j.state for s in series for j in jobs_of(node.db, s.series_instance_uid)
                }
            thread.join(0.3)
    assert not errors, errors
    # a job was working (converting or segmenting) while associations were still sending
    assert working_while_receiving & {"converting", "segmenting"}, working_while_receiving

    # every instance stored: Success for each, recorded, in the spool with the recorded digest
    for item, log in zip(series, logs, strict=True):
        assert log.successes == item.sop_instance_uids, log.statuses
        assert all(spooled(node.db, node.folder / "spool", item.sop_instance_uids).values())

    def all_ended() -> bool:
        rss.append(rss_mib(pid))
        states = [[JobState(j.state) for j in jobs_of(node.db, s.series_instance_uid)] for s in series]
        return all(len(s) == 1 and s[0] in (JobState.done, JobState.failed) for s in states)

    wait_until(all_ended, JOB_TIMEOUT_S, "every job to end", interval_s=1.0)
    for item in series:
        [job] = jobs_of(node.db, item.series_instance_uid)
        assert (job.state, job.reason) == ("done", None), (job.reason, job.detail)
        [output] = node.outputs(job.id)["seg"]
        assert seg_instances_of(orthanc, item.study_instance_uid, item.series_instance_uid) == [
            (output["series_instance_uid"], output["sop_instance_uid"])
        ]
    # the rejection is in the audit log
    rejected = node.node_events("association_rejected")
    assert rejected and {e.reason for e in rejected} == {"local_limit_exceeded"}
    assert max(rss) < RSS_LIMIT_MIB, f"peak RSS {max(rss):.0f} MiB"
