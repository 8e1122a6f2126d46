"""Fixtures of the security tests: a node on 127.0.0.1 port 0 and a throwaway PKI made at test time."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# the receiving node's test helpers (configurations, real series, DCMTK tools) live beside its tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom_node"))

from node_support import node_settings
from security_pki import Pki, make_pki

from config.loader import parse_config
from config.model import SegNodeConfig
from dicom_node.service import NodeService


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SegNodeConfig]:
    def make(**overrides: Any) -> SegNodeConfig:
        return parse_config(node_settings(tmp_path, **overrides), "test.yaml", environ={})

    return make


@pytest.fixture
def start_node() -> Iterator[Callable[..., NodeService]]:
    started: list[NodeService] = []

    def start(config: SegNodeConfig, **kwargs: Any) -> NodeService:
        kwargs.setdefault("completion_interval_s", 0)
        service = NodeService(config, **kwargs)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.server is not None:
            service.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
