"""Calling AE title and address whitelists per called AE title, beyond the cases of the SCP tests:
case, padding, host names, unresolvable hosts, several hosts for one AE title, accept_any_caller."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from config.model import SegNodeConfig
from dicom_node.receiving import statuses as status
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.scu import associate, rejection
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]

CALLED: list[dict[str, Any]] = [
    {
        "ae_title": "SEGNODE",
        "allowed_callers": [
            {"ae_title": "PACS_A"},
            {"ae_title": "BYNAME", "host": "localhost"},
            {"ae_title": "NOWHERE", "host": "no-such-host.invalid"},
            {"ae_title": "TWOHOSTS", "host": "192.0.2.10"},
            {"ae_title": "TWOHOSTS", "host": "127.0.0.2"},
        ],
    },
    {"ae_title": "SEGNODE_OPEN", "accept_any_caller": True},
]


@pytest.fixture
def node(make_config: Callable[..., SegNodeConfig], start_node: StartNode) -> NodeService:
    return start_node(make_config(**{"node.ae_titles": CALLED}))


@pytest.mark.parametrize(
    ("calling", "called", "bind", "code"),
    [
        # AE titles are case-sensitive (PS3.5 AE VR): "pacs_a" is another AE title
        ("pacs_a", "SEGNODE", "127.0.0.1", "calling_ae_not_recognised"),
        ("SEGNODE", "segnode", "127.0.0.1", "called_ae_not_recognised"),
        # a host that does not resolve admits nobody
        ("NOWHERE", "SEGNODE", "127.0.0.1", "calling_address_not_allowed"),
        # localhost resolves to 127.0.0.1 only
        ("BYNAME", "SEGNODE", "127.0.0.2", "calling_address_not_allowed"),
        # neither of the two configured hosts
        ("TWOHOSTS", "SEGNODE", "127.0.0.3", "calling_address_not_allowed"),
    ],
)
def test_refused(node: NodeService, calling: str, called: str, bind: str, code: str) -> None:
    assoc = associate(node.port, calling, called, bind_address=bind)
    expected_reason = (
        status.REASON_CALLED_AE_NOT_RECOGNISED
        if code == "called_ae_not_recognised"
        else status.REASON_CALLING_AE_NOT_RECOGNISED
    )
    assert rejection(assoc) == (
        status.REJECTED_PERMANENT,
        status.SOURCE_SERVICE_USER,
        expected_reason,
    )
    wait_until(
        lambda: [e.reason for e in audit.events(node.db, "association_rejected")] == [code],
        what=f"rejection {code} recorded",
    )
    # the node keeps serving an allowed peer
    ok = associate(node.port, "PACS_A")
    assert ok.is_established and int(ok.send_c_echo().Status) == status.SUCCESS
    ok.release()


@pytest.mark.parametrize(
    ("calling", "called", "bind"),
    [
        ("PACS_A", "SEGNODE", "127.0.0.1"),
        # leading and trailing spaces of an AE title are not significant (PS3.5 6.2)
        (" PACS_A ", "SEGNODE", "127.0.0.1"),
        ("BYNAME", "SEGNODE", "127.0.0.1"),
        ("TWOHOSTS", "SEGNODE", "127.0.0.2"),
        # accept_any_caller applies to its own called AE title only
        ("ANYONE", "SEGNODE_OPEN", "127.0.0.3"),
    ],
)
def test_allowed(node: NodeService, calling: str, called: str, bind: str) -> None:
    assoc = associate(node.port, calling, called, bind_address=bind)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    assoc.release()
    assert [e.reason for e in audit.events(node.db, "association_rejected")] == []


def test_accept_any_caller_does_not_open_the_other_ae_titles(node: NodeService) -> None:
    assert associate(node.port, "ANYONE", "SEGNODE_OPEN").is_established
    assert associate(node.port, "ANYONE", "SEGNODE").is_rejected
    wait_until(
        lambda: (
            [e.reason for e in audit.events(node.db, "association_rejected")] == ["calling_ae_not_recognised"]
        ),
        what="rejection recorded",
    )


def test_unresolvable_host_is_logged(node: NodeService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_node.receiving.scp"):
        assert associate(node.port, "NOWHERE").is_rejected
    assert any(
        "cannot resolve configured peer host 'no-such-host.invalid'" in r.getMessage() for r in caplog.records
    )
