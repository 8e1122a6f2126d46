"""DCMTK's echoscu and storescu (the Debian package) against the node on 127.0.0.1, ephemeral port."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association, Event, Instance, Series
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.dcmtk import dcmtk, storescp
from tests.support.paths import CINE, T2_SAG, TS9, series_files
from tests.support.series import dataset_bytes
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]
pytestmark = pytest.mark.e2e


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_echoscu_is_answered(make_config: Callable[..., SegNodeConfig], start_node: StartNode) -> None:
    node = start_node(make_config())
    result = run([dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", str(node.port)])
    assert result.returncode == 0, result.stderr
    wait_until(lambda: audit.count(node.db, Event, Event.what == "echo") == 1, what="echo event")


def test_echoscu_from_unknown_calling_ae_title_is_rejected(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    result = run([dcmtk("echoscu"), "-aet", "NOBODY", "-aec", "SEGNODE", "127.0.0.1", str(node.port)])
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "Association Rejected" in text and "Calling AE Title Not Recognized" in text
    wait_until(
        lambda: audit.count(node.db, Event, Event.what == "association_rejected") == 1, what="rejection event"
    )


def test_storescu_sends_real_mr_series_byte_identical(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, tmp_path: Path
) -> None:
    """storescu sends real series to the node and, as the reference, to DCMTK's storescp in bit-preserving
    mode: every instance in the spool is byte for byte what storescp received, and the audit rows match."""
    node = start_node(make_config())
    # the three uncompressed transfer syntaxes of the 9-syntax set (storescu would transcode compressed
    # files; the pynetdicom test sends all nine in their own syntaxes)
    files = series_files(T2_SAG) + series_files(CINE) + series_files(TS9)[:3]

    def storescu(port: int, called: str) -> None:
        result = run(
            [
                dcmtk("storescu"),
                "--required",
                "-aet",
                "STORESCU",
                "-aec",
                called,
                "127.0.0.1",
                str(port),
                *map(str, files),
            ]
        )
        assert result.returncode == 0, result.stdout + result.stderr

    storescu(node.port, "SEGNODE")
    reference_dir = tmp_path / "storescp"
    with storescp(reference_dir, "--bit-preserving") as reference_scp:
        storescu(reference_scp.port, "STORESCP")
    reference = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reference_dir.iterdir()
    }
    wait_until(
        lambda: audit.count(node.db, Association, Association.result == "released") == 1, what="release"
    )

    with node.db.read() as session:
        instances = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        series = {r.series_instance_uid: r for r in session.scalars(select(Series))}
        [assoc] = session.scalars(select(Association))
    assert len(instances) == len(files) == len(reference)
    compared = 0
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = instances[ds.SOPInstanceUID]
        stored = node.spool.root / row.spool_path
        theirs = reference[ds.SOPInstanceUID]
        # storescu re-encodes (explicit sequence lengths), so the reference for "what was sent" is what the
        # bit-preserving storescp got, wherever both SCPs negotiated the same transfer syntax (storescp
        # prefers explicit VR where the node takes the implicit VR file as is)
        if (
            pydicom.dcmread(theirs, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == row.transfer_syntax_uid
        ):
            assert dataset_bytes(stored) == dataset_bytes(theirs), path.name
            compared += 1
        # storescu may transcode (big endian -> little endian): compare pixel values, and the audit row
        # records the transfer syntax the instance arrived (and is stored) in
        received = pydicom.dcmread(stored)
        assert row.transfer_syntax_uid == received.file_meta.TransferSyntaxUID
        assert (received.pixel_array == pydicom.dcmread(path).pixel_array).all(), path.name
        assert row.size_bytes == stored.stat().st_size
        assert (row.sop_class_uid, row.study_instance_uid) == (ds.SOPClassUID, ds.StudyInstanceUID)
    assert compared >= len(files) - 2  # all but the implicit VR and the big endian file
    expected_series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in files}
    assert set(series) == expected_series
    assert (assoc.calling_ae_title, assoc.called_ae_title, assoc.instances_received) == (
        "STORESCU",
        "SEGNODE",
        len(files),
    )
