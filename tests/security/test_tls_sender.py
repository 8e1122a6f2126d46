"""DICOM over TLS from the C-STORE SCU: SegNode's sender to a TLS destination (here: a SegNode node with
TLS, on 127.0.0.1 port 0, certificates from the throwaway test PKI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from security_pki import Pki
from sqlalchemy import select
from test_tls import tls_settings

from config.errors import ConfigError
from config.loader import parse_config
from config.model import SegNodeConfig
from config.routing import DestinationConfig, SendingConfig
from dicom_node.audit.tables import Instance
from dicom_node.outputs.sender import SendOutcome, send_datasets
from dicom_node.service import NodeService
from tests.support.paths import T2_SAG, series_files

StartNode = Callable[..., NodeService]


def destination(node: NodeService, **tls: object) -> DestinationConfig:
    return DestinationConfig.model_validate(
        {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": node.port, "tls": tls}
    )


def sending() -> SendingConfig:
    return SendingConfig.model_validate(
        {"calling_ae_title": "PYSCU", "connect_timeout_s": 5, "acse_timeout_s": 5, "network_timeout_s": 5}
    )


@pytest.fixture
def tls_node(make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki) -> NodeService:
    return start_node(make_config(**tls_settings(pki, require_client=True)))


def stored_uids(node: NodeService) -> set[str]:
    with node.db.read() as session:
        return {row.sop_instance_uid for row in session.scalars(select(Instance))}


def test_sender_stores_over_tls_with_a_client_certificate(tls_node: NodeService, pki: Pki) -> None:
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    dest = destination(
        tls_node,
        enabled=True,
        ca_certificates=str(pki.ca),
        certificate=str(pki.client_cert),
        private_key=str(pki.client_key),
    )
    result = send_datasets([ds], "secure-pacs", dest, sending())
    assert result.outcome is SendOutcome.SUCCESS, result.detail
    assert stored_uids(tls_node) == {ds.SOPInstanceUID}


def test_sender_without_client_certificate_is_refused_and_retried(tls_node: NodeService, pki: Pki) -> None:
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    dest = destination(tls_node, enabled=True, ca_certificates=str(pki.ca))
    result = send_datasets([ds], "secure-pacs", dest, sending())
    assert not result.delivered
    assert result.retryable
    assert stored_uids(tls_node) == set()


def test_sender_does_not_trust_a_server_outside_its_ca(tls_node: NodeService, pki: Pki) -> None:
    """The destination's certificate does not chain to the configured CA: nothing is sent."""
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    dest = destination(
        tls_node,
        enabled=True,
        ca_certificates=str(pki.rogue_cert),
        certificate=str(pki.client_cert),
        private_key=str(pki.client_key),
    )
    result = send_datasets([ds], "secure-pacs", dest, sending())
    assert not result.delivered
    assert stored_uids(tls_node) == set()


def test_plain_sender_to_a_tls_destination_delivers_nothing(tls_node: NodeService) -> None:
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    result = send_datasets([ds], "secure-pacs", destination(tls_node), sending())
    assert not result.delivered
    assert stored_uids(tls_node) == set()


def test_missing_certificate_file_is_a_permanent_tls_setup_failure(
    tls_node: NodeService, pki: Pki, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    dest = destination(tls_node, enabled=True, ca_certificates=str(tmp_path / "missing-ca.pem"))
    result = send_datasets([ds], "secure-pacs", dest, sending())
    assert result.outcome is SendOutcome.TLS_SETUP_FAILED
    assert not result.retryable
    assert "missing-ca.pem" in result.detail


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"enabled": True}, "node.yaml: destinations.pacs.tls: TLS is enabled: ca_certificates is required"),
        (
            {"enabled": True, "ca_certificates": "ca.pem", "certificate": "c.pem"},
            "node.yaml: destinations.pacs.tls: certificate and private_key go together",
        ),
    ],
)
def test_destination_tls_configuration_errors_name_the_key(tls: dict[str, object], message: str) -> None:
    data = {"destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "tls": tls}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "node.yaml", environ={})
    assert any(message in problem for problem in caught.value.problems), caught.value.problems
