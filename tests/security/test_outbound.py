"""The node connects to nothing but its configured destinations: no usage statistics, no update checks, no
licence calls, no name lookups of other hosts. A Python audit hook records every ``socket.connect`` and
``socket.getaddrinfo`` of the process while a real series is received, segmented (nnU-Net, tiny test
models), encoded and sent to DCMTK's storescp as the destination."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from dicom_node.jobs.context import PipelineContext
from dicom_node.jobs.store import JobState
from dicom_node.jobs.workers import Pipeline
from dicom_node.service import NodeService
from inference.engine import Engine
from tests.support.dcmtk import storescp
from tests.support.paths import T2_SAG, series_files
from tests.support.pipeline import pipeline_config, receive, state
from tests.support.waiting import wait_until

_seen: list[tuple[str, Any]] | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _seen is None:
        return
    if event == "socket.connect":
        _seen.append((event, args[1]))
    elif event == "socket.getaddrinfo":
        _seen.append((event, args[0]))


@pytest.mark.slow
def test_a_whole_job_contacts_only_the_configured_destination(tmp_path: Path, engine: Engine) -> None:
    global _seen, _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: install once, record only inside this test
        sys.addaudithook(_audit)
        _hook_installed = True
    with storescp(tmp_path / "pacs") as destination:
        config = pipeline_config(tmp_path, destination.port)
        _seen = []
        try:
            service = NodeService(config, completion_interval_s=0, process_jobs=False)
            service.start()
            node_port = service.port
            ctx = PipelineContext.create(config, service.audit, service.jobs)
            pipeline = Pipeline(ctx, engine_factory=lambda: engine)
            pipeline.start()
            try:
                job_id = receive(service, series_files(T2_SAG))
                pipeline.wake()
                done = (JobState.done, JobState.failed)
                wait_until(lambda: state(ctx, job_id) in done, 600, "job ended")
            finally:
                pipeline.stop()
                service.stop()
            seen = list(_seen)
        finally:
            _seen = None
    assert state(ctx, job_id) is JobState.done
    assert list((tmp_path / "pacs").iterdir()), "the SEG reached the destination"
    connects = {
        address for event, address in seen if event == "socket.connect" and isinstance(address, tuple)
    }
    # the test's own SCU connects to the node's port; the node itself only to the destination
    assert ("127.0.0.1", destination.port) in connects
    assert connects <= {("127.0.0.1", destination.port), ("127.0.0.1", node_port)}, connects
    lookups = {host for event, host in seen if event == "socket.getaddrinfo"}
    # None: a lookup of a local (passive) address, which asks no name server
    assert lookups <= {"127.0.0.1", None}, f"name lookups of other hosts: {lookups}"
