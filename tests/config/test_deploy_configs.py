"""The configuration files shipped under deploy/ are valid, so a compose or systemd set-up starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from config.loader import load_config
from dicom_node.cluster.worker import parse_queues
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*segnode*.yaml")), ids=lambda p: p.name)
def test_shipped_configuration_is_valid(path: Path) -> None:
    config = load_config(path, environ={})
    assert config.routes, f"{path.name} routes nothing"
    for rule in config.routes:
        if not rule.action.ignore:
            assert set(rule.action.destinations) <= set(config.destinations)


def _compose_environment(values: dict[str, str]) -> dict[str, str]:
    """The SEGNODE__ variables of a compose service, with ``${VAR:?...}`` / ``${VAR:-}`` filled in."""
    return {name: re.sub(r"\$\{[A-Z_]+:[?-][^}]*\}", "secret", str(value)) for name, value in values.items()}


def test_cluster_compose_file_runs_valid_receivers_and_workers() -> None:
    """deploy/compose-cluster.yaml: Orthanc, PostgreSQL, Redis, one receiver, CPU workers and a CUDA worker,
    all SegNode services on the cluster configuration it mounts, with the database and broker it runs."""
    compose = yaml.safe_load((DEPLOY / "compose-cluster.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"orthanc", "postgres", "redis", "receiver", "worker-cpu", "worker-cuda"} <= set(services)
    segnode = {name: s for name, s in services.items() if s.get("image", "").startswith("segnode:")}
    assert set(segnode) == {"receiver", "worker-cpu", "worker-cuda"}
    for name, service in segnode.items():
        [mount] = [v for v in service["volumes"] if v.endswith(":/etc/segnode/segnode.yaml:ro")]
        config = load_config(
            DEPLOY / mount.split(":")[0], environ=_compose_environment(service["environment"])
        )
        assert config.cluster is not None, name
        assert config.database.url.startswith("postgresql+psycopg://segnode:secret@postgres:5432/"), name
        assert config.cluster.broker_url == "redis://redis:6379/0", name
        assert "segnode-shared:/srv/segnode" in service["volumes"], name
        assert str(config.storage.spool_dir).startswith("/srv/segnode/"), name
    assert segnode["receiver"]["command"][:3] == ["serve", "--role", "receiver"]
    assert segnode["worker-cpu"]["deploy"]["replicas"] == 2
    cpu, cuda = segnode["worker-cpu"]["command"], segnode["worker-cuda"]["command"]
    assert parse_queues(cpu[cpu.index("--queues") + 1]) == ["convert", "segment", "encode", "send"]
    assert parse_queues(cuda[cuda.index("--queues") + 1]) == ["segment"]
    assert cuda[cuda.index("--device") + 1] == "cuda:0"
    assert segnode["worker-cuda"]["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
