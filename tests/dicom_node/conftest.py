"""Fixtures of the receiving node's tests: a configured node on 127.0.0.1, port 0, files under tmp_path."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dicom_node.service import NodeService
from tests.support.node import running_nodes
from tests.support.pipeline import PipelineNode, pipeline_nodes


@pytest.fixture
def start_node() -> Iterator[Callable[..., NodeService]]:
    # the tests drive completion themselves; receiving tests check that jobs stay queued
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        yield start


@pytest.fixture
def make_node() -> Iterator[Callable[..., PipelineNode]]:
    """``make(tmp, port, **overrides)``: a receiving node (pipeline threads off) routing to a destination
    on ``port``, and the stage context on the same database (``tests.support.pipeline``)."""
    with pipeline_nodes() as make:
        yield make
