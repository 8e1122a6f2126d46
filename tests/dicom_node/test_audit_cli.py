"""``segnode audit``: list and filter audit rows as a table, JSON or CSV, from a real node's database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from sqlalchemy import select

from config.model import SegNodeConfig
from dicom_node.audit.tables import Association
from dicom_node.service import NodeService
from tests.support.cli import run_segnode
from tests.support.paths import CINE, T2_SAG, series_files
from tests.support.scu import associate, send_series
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]


def populate(node: NodeService) -> None:
    for calling, files in (("PYSCU", series_files(T2_SAG)[:3]), ("LOOPBACK", series_files(CINE)[:2])):
        send_series(node.port, files, calling)
    assert associate(node.port, "INTRUDER").is_rejected

    def settled() -> bool:
        with node.db.read() as session:
            return all(r.result in {"released", "rejected"} for r in session.scalars(select(Association)))

    wait_until(settled, what="associations settled")


def test_audit_lists_and_filters_as_json_csv_and_table(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    populate(node)
    url = node.db.url
    t2_series = pydicom.dcmread(series_files(T2_SAG)[0]).SeriesInstanceUID

    result = run_segnode("audit", "instances", "--database", url, "--series", t2_series, "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and {r["series_instance_uid"] for r in rows} == {t2_series}

    result = run_segnode("audit", "instances", "--database", url, "--ae", "LOOPBACK", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == 2 and all(r["series_instance_uid"] != t2_series for r in table)

    result = run_segnode("audit", "associations", "--database", url, "--state", "rejected")
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "calling_ae_title", "called_ae_title"]
    assert "INTRUDER" in lines[2] and lines[-1] == "(1 row)"

    result = run_segnode("audit", "events", "--database", url, "--ae", "INTRUDER", "--format", "json")
    [event] = json.loads(result.stdout)
    assert (event["what"], event["reason"]) == ("association_rejected", "calling_ae_not_recognised")

    result = run_segnode("audit", "events", "--database", url, "--since", "2999-01-01", "--format", "json")
    assert json.loads(result.stdout) == []
    result = run_segnode(
        "audit", "series", "--database", url, "--until", "2000-01-01T00:00:00+00:00", "--format", "csv"
    )
    assert result.stdout.splitlines()[1:] == []


def test_audit_reports_bad_queries_clearly(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode
) -> None:
    node = start_node(make_config())
    result = run_segnode("audit", "events", "--database", node.db.url, "--since", "yesterday")
    assert result.returncode == 1
    assert (
        "error [invalid_audit_query]: --since: 'yesterday' is not an ISO 8601 date or time" in result.stderr
    )
    result = run_segnode("audit", "instances", "--database", node.db.url, "--state", "open")
    assert "--state does not apply to instances" in result.stderr


def test_audit_on_a_database_without_audit_tables(tmp_path: Path) -> None:
    result = run_segnode("audit", "events", "--database", f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.returncode == 1 and "no audit tables (has the node run there?)" in result.stderr
