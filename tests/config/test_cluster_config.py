"""The cluster section: checked with key paths by ``segnode config validate``; the roles refuse a
configuration that does not fit them, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.errors import ConfigError
from config.loader import parse_config
from dicom_node.cluster.worker import WorkerStartError, parse_queues
from tests.support.cli import run_segnode
from tests.support.settings import write_settings

PG = "postgresql+psycopg://segnode@db.example.org/segnode"


def cluster_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "database": {"url": PG},
        "storage": {"spool_dir": "/srv/segnode/spool"},
        "pipeline": {"work_dir": "/srv/segnode/work", "outbox_dir": "/srv/segnode/outbox"},
        "cluster": {"broker_url": "redis://broker.example.org:6379/0"},
    }
    for key, value in changes.items():
        section, name = key.split(".", 1)
        document.setdefault(section, {})[name] = value
    return document


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, "cluster.yaml", environ={})
    return caught.value.problems


def test_a_cluster_configuration_with_a_server_database_and_shared_paths_is_valid() -> None:
    config = parse_config(cluster_document(), "cluster.yaml", environ={})
    assert config.cluster is not None
    assert config.cluster.queues.by_stage() == {
        "convert": "convert",
        "segment": "segment",
        "encode": "encode",
        "send": "send",
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"database.url": "sqlite:///segnode.db"},
            "cluster.yaml: database.url: the cluster needs a database server",
        ),
        (
            {"storage.spool_dir": "spool"},
            "cluster.yaml: storage.spool_dir: the cluster needs an absolute path",
        ),
        (
            {"pipeline.outbox_dir": "outbox"},
            "cluster.yaml: pipeline.outbox_dir: the cluster needs an absolute",
        ),
        ({"cluster.broker_url": "http://broker:6379"}, "cluster.yaml: cluster.broker_url: not a broker URL"),
        (
            {"cluster.heartbeat_s": 40},
            "cluster.yaml: cluster: heartbeat_s (40) must be at most half of lease_s",
        ),
        (
            {"cluster.queues": {"segment": "gpu queue"}},
            "cluster.yaml: cluster.queues.segment: a queue name is",
        ),
        ({"cluster.lease": 5}, "cluster.yaml: cluster.lease: unknown key"),
    ],
)
def test_cluster_problems_name_the_key_and_the_reason(changes: dict[str, Any], expected: str) -> None:
    found = problems(cluster_document(**changes))
    assert any(p.startswith(expected) for p in found), found


def test_a_broker_password_is_not_repeated_in_the_message() -> None:
    [problem] = problems(cluster_document(**{"cluster.broker_url": "http://user:s3cret@broker:6379"}))
    assert "s3cret" not in problem


def test_queues_of_a_worker_are_stages() -> None:
    assert parse_queues("send, segment") == ["segment", "send"]
    with pytest.raises(WorkerStartError, match="unknown: gpu"):
        parse_queues("segment,gpu")


def test_the_roles_refuse_a_configuration_that_does_not_fit_them(tmp_path: Path) -> None:
    cluster_file = write_settings(tmp_path / "cluster.yaml", cluster_document())
    embedded_file = write_settings(
        tmp_path / "node.yaml", {"storage": {"spool_dir": str(tmp_path / "spool")}}
    )
    plain = run_segnode("serve", "--config", str(cluster_file))
    assert plain.returncode == 2 and "segnode serve --role receiver" in plain.stderr, plain.stderr
    worker = run_segnode("worker", "--config", str(embedded_file))
    assert worker.returncode == 1 and "needs the cluster section" in worker.stderr, worker.stderr
    assert f"{embedded_file}: cluster: missing" in worker.stderr and "cluster.broker_url" in worker.stderr
    receiver = run_segnode("serve", "--role", "receiver", "--config", str(embedded_file))
    assert receiver.returncode == 1 and "needs the cluster section" in receiver.stderr, receiver.stderr
    validate = run_segnode(
        "config",
        "validate",
        str(write_settings(tmp_path / "bad.yaml", cluster_document(**{"database.url": "sqlite:///x.db"}))),
    )
    assert validate.returncode == 2 and "database.url: the cluster needs a database server" in validate.stderr
