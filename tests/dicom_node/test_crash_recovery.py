"""``kill -9`` of a real ``segnode serve`` while DCMTK storescu is mid-transfer, then restart and re-send."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest
import yaml

from dicom_node.receiving.spool import UNACKNOWLEDGED_DIR
from tests.support.dcmtk import dcmtk
from tests.support.paths import T2_SAG, series_files
from tests.support.series import clone_series
from tests.support.serve import ServeProcess
from tests.support.settings import node_settings
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INSTANCES = 150


def successes(storescu_output: str) -> list[Path]:
    """Files storescu reported a Success C-STORE response for (``-v`` output)."""
    done: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def db_rows(db: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return {
            uid: (path, digest)
            for uid, path, digest in conn.execute(
                "SELECT sop_instance_uid, spool_path, sha256 FROM instances"
            )
        }


def test_kill_9_mid_transfer_loses_nothing_acknowledged(tmp_path: Path) -> None:
    files = clone_series(series_files(T2_SAG)[0], INSTANCES, tmp_path / "series")
    settings = node_settings(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(settings))
    spool = Path(settings["storage"]["spool_dir"])
    database = tmp_path / "audit.db"
    node = ServeProcess(tmp_path / "serve", config)

    port = node.start()
    assert node.process is not None
    storescu_log = tmp_path / "storescu.log"
    with storescu_log.open("wb") as out:
        sender = subprocess.Popen(
            [
                dcmtk("storescu"),
                "-v",
                "-aet",
                "STORESCU",
                "-aec",
                "SEGNODE",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        wait_until(
            lambda: len(list(spool.rglob("*.dcm"))) >= 20,
            60,
            "20 instances in the spool",
            interval_s=0.005,
            process=sender,  # storescu must not have finished before the node is killed
        )
        node.kill()
        sender.wait(timeout=60)
    acknowledged = successes(storescu_log.read_text(errors="replace"))
    assert 0 < len(acknowledged) < INSTANCES, "the kill must land mid-transfer"
    assert sender.returncode != 0

    port = node.start()
    try:
        # no partial file anywhere: temporary files of the killed node were removed at start
        assert not [p for p in spool.rglob("*") if p.is_file() and p.suffix != ".dcm"]
        rows = db_rows(database)
        for path in acknowledged:
            source = pydicom.dcmread(path)
            assert source.SOPInstanceUID in rows, f"{path.name} was acknowledged but is not in the database"
            spool_path, digest = rows[source.SOPInstanceUID]
            stored = spool / spool_path
            assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
            assert (pydicom.dcmread(stored).pixel_array == source.pixel_array).all()
        # every file in the spool is complete (a rename is atomic), with or without its audit row; one
        # renamed into place just before the kill, without its row, was moved aside (never acknowledged)
        for stored in spool.rglob("*.dcm"):
            pydicom.dcmread(stored).pixel_array  # noqa: B018 - decodes the whole file or raises
        acknowledged_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in acknowledged}
        for aside in (spool / UNACKNOWLEDGED_DIR).rglob("*.dcm"):
            assert aside.stem not in rows and aside.stem not in acknowledged_uids

        result = subprocess.run(
            [
                dcmtk("storescu"),
                "-aet",
                "STORESCU",
                "-aec",
                "SEGNODE",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        rows = db_rows(database)
        assert len(rows) == INSTANCES
        in_spool = [p for p in spool.rglob("*.dcm") if UNACKNOWLEDGED_DIR not in p.parts]
        assert len(in_spool) == INSTANCES
        with sqlite3.connect(database) as conn:
            [(count,)] = conn.execute("SELECT instance_count FROM series")
            repeats = conn.execute("SELECT count(*) FROM instances WHERE times_received = 2").fetchone()[0]
        assert count == INSTANCES
        assert repeats >= len(acknowledged)
    finally:
        assert node.stop() == 0, node.log_tail()
    with sqlite3.connect(database) as conn:
        whats = [w for (w,) in conn.execute("SELECT what FROM events ORDER BY id")]
    assert whats.count("node_started") == 2 and whats[-1] == "node_stopped"
