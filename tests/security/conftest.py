"""Fixtures of the security tests: a node on 127.0.0.1 port 0 and a throwaway PKI made at test time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from security_pki import Pki, make_pki

from dicom_node.service import NodeService
from tests.support.node import running_nodes


@pytest.fixture
def start_node() -> Iterator[Callable[..., NodeService]]:
    with running_nodes(completion_interval_s=0) as start:  # jobs are processed (security of a whole job)
        yield start


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
