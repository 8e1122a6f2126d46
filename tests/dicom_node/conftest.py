"""Fixtures of the receiving node's tests: a configured node on 127.0.0.1, port 0, files under tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_support import node_settings

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
        kwargs.setdefault("process_jobs", False)  # receiving tests check jobs stay queued
        service = NodeService(config, **kwargs)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.server is not None:
            service.stop()
