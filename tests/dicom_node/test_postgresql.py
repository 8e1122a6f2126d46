"""The same models and migrations on a real PostgreSQL server started by the test (127.0.0.1, free port)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Event, Instance, Series
from dicom_node.jobs.store import JobState
from dicom_node.service import NodeService
from tests.support.node import FrozenClock, send_recorded
from tests.support.paths import T2_SAG, series_files
from tests.support.ports import free_port

pytest.importorskip(
    "psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install psycopg[binary])"
)
pytestmark = pytest.mark.e2e


def _postgres_bin(name: str) -> str | None:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    # PostgreSQL refuses to run as root: run it as the postgres user when the tests run as root
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="segnode-pg-"))
    data, sockets, port = base / "data", base / "sockets", free_port()
    sockets.mkdir()
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "--auth=trust", "-U", "postgres"], check=True, capture_output=True
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=on"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)


def test_node_stores_completes_and_audits_on_postgresql(
    postgres_url: str, make_config: Callable[..., SegNodeConfig], start_node: Callable[..., NodeService]
) -> None:
    """PostgreSQL as the audit database (the server fixture comes first: it outlives the node)."""
    clock = FrozenClock()
    node = start_node(
        make_config(
            **{
                "database.url": postgres_url,
                "completion.quiet_period_s": 5,
                "completion.on_association_release": False,
            }
        ),
        clock=clock,
    )
    files = series_files(T2_SAG)
    send_recorded(node, files)
    clock.advance(5)
    [job] = node.completer.run_once()
    node.jobs.transition(job.id, JobState.converting)
    node.jobs.transition(job.id, JobState.failed, reason="test_failure")
    with node.db.read() as session:
        assert len(list(session.scalars(select(Instance)))) == len(files)
        series = session.scalars(select(Series)).one()
        assert (series.state, series.instance_count) == ("complete", len(files))
        assert series.last_received_at.tzinfo is not None
        whats = [e.what for e in session.scalars(select(Event).order_by(Event.id))]
    assert whats.count("job_transition") == 2 and "series_complete" in whats
    assert node.jobs.get(job.id).failed_stage is JobState.converting
