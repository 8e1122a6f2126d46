"""``segnode audit``: list and filter audit rows as a table, JSON or CSV, from a real node's database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
from node_support import CINE, T2_SAG, series_files, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association
from dicom_node.service import NodeService

StartNode = Callable[..., NodeService]


def segnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def populate(node: NodeService) -> None:
    for calling, files in (("PYSCU", series_files(T2_SAG)[:3]), ("LOOPBACK", series_files(CINE)[:2])):
        ae = AE(ae_title=calling)
        ae.add_requested_context(MRImageStorage, pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SEGNODE")
        for path in files:
            assoc.send_c_store(pydicom.dcmread(path))
        assoc.release()
    rejected = AE(ae_title="INTRUDER")
    rejected.add_requested_context(MRImageStorage)
    assert rejected.associate("127.0.0.1", node.port, ae_title="SEGNODE").is_rejected

    def settled() -> bool:
        with node.db.read() as session:
            return all(r.result in {"released", "rejected"} for r in session.scalars(select(Association)))

    wait_for(settled, what="associations settled")


def test_audit_lists_and_filters_as_json_csv_and_table(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    populate(node)
    url = node.db.url
    t2_series = pydicom.dcmread(series_files(T2_SAG)[0]).SeriesInstanceUID

    result = segnode("instances", "--database", url, "--series", t2_series, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and {r["series_instance_uid"] for r in rows} == {t2_series}

    result = segnode("instances", "--database", url, "--ae", "LOOPBACK", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == 2 and all(r["series_instance_uid"] != t2_series for r in table)

    result = segnode("associations", "--database", url, "--state", "rejected")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "calling_ae_title", "called_ae_title"]
    assert "INTRUDER" in lines[2] and lines[-1] == "(1 row)"

    result = segnode("events", "--database", url, "--ae", "INTRUDER", "--format", "json")
    [event] = json.loads(result.stdout)
    assert (event["what"], event["reason"]) == ("association_rejected", "calling_ae_not_recognised")

    result = segnode("events", "--database", url, "--since", "2999-01-01", "--format", "json")
    assert json.loads(result.stdout) == []
    result = segnode("series", "--database", url, "--until", "2000-01-01T00:00:00+00:00", "--format", "csv")
    assert result.stdout.splitlines()[1:] == []


def test_audit_reports_bad_queries_clearly(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    result = segnode("events", "--database", node.db.url, "--since", "yesterday")
    assert result.returncode == 1
    assert (
        "error [invalid_audit_query]: --since: 'yesterday' is not an ISO 8601 date or time" in result.stderr
    )
    result = segnode("instances", "--database", node.db.url, "--state", "open")
    assert "--state does not apply to instances" in result.stderr


def test_audit_on_a_database_without_audit_tables(tmp_path: Path) -> None:
    result = segnode("events", "--database", f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.returncode == 1 and "no audit tables (has the node run there?)" in result.stderr
