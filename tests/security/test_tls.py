"""DICOM over TLS on the SCP, with a CA and certificates generated for the test run.

A pynetdicom SCU and DCMTK's echoscu/storescu talk to a real node on 127.0.0.1 port 0.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from security_pki import Pki
from sqlalchemy import select

from config.errors import ConfigError
from config.loader import parse_config
from config.model import SegNodeConfig
from config.node import TlsVersion
from dicom_node.audit.tables import Instance
from dicom_node.receiving import statuses as status
from dicom_node.receiving.tls import TlsSetupError, client_context
from dicom_node.service import NodeService
from tests.support import audit
from tests.support.dcmtk import dcmtk
from tests.support.paths import T2_SAG, series_files
from tests.support.scu import associate, rejection
from tests.support.settings import node_settings
from tests.support.waiting import wait_until

StartNode = Callable[..., NodeService]


def tls_settings(pki: Pki, require_client: bool = False, **extra: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "network.tls": {
            "enabled": True,
            "certificate": str(pki.server_cert),
            "private_key": str(pki.server_key),
            "ca_certificates": str(pki.ca),
            "require_client_certificate": require_client,
        }
    }
    settings.update(extra)
    return settings


def test_tls_association_stores_an_instance(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki)))
    assoc = associate(node.port, tls=client_context(pki.ca))
    assert assoc.is_established
    assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)  # type: ignore[union-attr]
    assert int(assoc.send_c_echo().Status) == status.SUCCESS
    ds = pydicom.dcmread(series_files(T2_SAG)[0])
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    assoc.release()
    with node.db.read() as session:
        [row] = session.scalars(select(Instance))
    assert row.sop_instance_uid == ds.SOPInstanceUID
    assert (node.spool.root / row.spool_path).is_file()


def test_plain_association_to_the_tls_port_fails_and_the_node_keeps_serving(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki)))
    plain = associate(node.port, tls=None, timeout_s=5)
    assert not plain.is_established
    wait_until(
        lambda: len(audit.events(node.db, "connection_closed")) == 1, what="closed connection recorded"
    )
    [event] = audit.events(node.db, "connection_closed")
    assert event.outcome == "failure" and event.reason == "no_association_request"
    assert "127.0.0.1" in (event.detail or "")
    secure = associate(node.port, tls=client_context(pki.ca))
    assert secure.is_established
    assert int(secure.send_c_echo().Status) == status.SUCCESS
    secure.release()


def test_a_silent_connection_does_not_hold_up_other_peers(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    """pynetdicom wraps accepted sockets in its accept loop: the handshake must not run there, or one
    peer that connects and sends nothing blocks every other association."""
    node = start_node(make_config(**tls_settings(pki)))
    with socket.create_connection(("127.0.0.1", node.port)):
        assoc = associate(node.port, tls=client_context(pki.ca), timeout_s=5)
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == status.SUCCESS
        assoc.release()


def test_client_certificate_required(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki, require_client=True)))
    without = associate(node.port, tls=client_context(pki.ca), timeout_s=5)
    assert not without.is_established
    rogue = associate(node.port, tls=client_context(pki.ca, pki.rogue_cert, pki.rogue_key), timeout_s=5)
    assert not rogue.is_established
    wait_until(lambda: len(audit.events(node.db, "connection_closed")) == 2, what="both refusals recorded")
    good = associate(node.port, tls=client_context(pki.ca, pki.client_cert, pki.client_key))
    assert good.is_established
    assert int(good.send_c_echo().Status) == status.SUCCESS
    good.release()


def test_client_certificate_optional_when_not_required(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki, require_client=False)))
    for context in (client_context(pki.ca), client_context(pki.ca, pki.client_cert, pki.client_key)):
        assoc = associate(node.port, tls=context)
        assert assoc.is_established
        assoc.release()


def test_tls_does_not_bypass_the_ae_title_whitelist(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki, require_client=True)))
    assoc = associate(node.port, "INTRUDER", tls=client_context(pki.ca, pki.client_cert, pki.client_key))
    assert rejection(assoc) == (
        status.REJECTED_PERMANENT,
        status.SOURCE_SERVICE_USER,
        status.REASON_CALLING_AE_NOT_RECOGNISED,
    )


def test_minimum_protocol_version_is_enforced(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    settings = tls_settings(pki)
    settings["network.tls"]["min_version"] = "TLSv1.3"  # type: ignore[index]
    node = start_node(make_config(**settings))
    old = client_context(pki.ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert not associate(node.port, tls=old, timeout_s=5).is_established
    assoc = associate(node.port, tls=client_context(pki.ca, min_version=TlsVersion.tls1_3))
    assert assoc.is_established
    assoc.release()


def test_dcmtk_echoscu_and_storescu_over_tls(
    make_config: Callable[..., SegNodeConfig], start_node: StartNode, pki: Pki
) -> None:
    node = start_node(make_config(**tls_settings(pki, require_client=True)))
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
    echo = subprocess.run(
        [dcmtk("echoscu"), *tls, "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    files = series_files(T2_SAG)[:3]
    store = subprocess.run(
        [dcmtk("storescu"), *tls, "-aet", "STORESCU", "-aec", "SEGNODE", "127.0.0.1", str(node.port)]
        + [str(p) for p in files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert store.returncode == 0, store.stderr
    with node.db.read() as session:
        assert len(list(session.scalars(select(Instance)))) == 3
    # without a client certificate DCMTK is refused as well
    anonymous = subprocess.run(
        [dcmtk("echoscu"), "+tla", "+cf", str(pki.ca), "-aet", "ECHOSCU", "-aec", "SEGNODE"]
        + ["127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert anonymous.returncode != 0


def test_tls_configuration_errors_name_the_key(tmp_path: Path, pki: Pki) -> None:
    data = node_settings(tmp_path, **{"network.tls": {"enabled": True}})
    with pytest.raises(ConfigError) as info:
        parse_config(data, "node.yaml", environ={})
    assert "network.tls" in str(info.value) and "certificate and private_key are required" in str(info.value)

    data = node_settings(
        tmp_path,
        **{"network.tls": {"certificate": str(pki.server_cert), "require_client_certificate": True}},
    )
    with pytest.raises(ConfigError) as info:
        parse_config(data, "node.yaml", environ={})
    assert "require_client_certificate needs ca_certificates" in str(info.value)


def test_missing_or_unusable_certificate_stops_the_start(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.pem"
    config = parse_config(
        node_settings(
            tmp_path,
            **{
                "network.tls": {
                    "enabled": True,
                    "certificate": str(missing),
                    "private_key": str(pki.server_key),
                }
            },
        ),
        "node.yaml",
        environ={},
    )
    with pytest.raises(TlsSetupError) as info:
        NodeService(config, completion_interval_s=0).start()
    assert f"network.tls.certificate: {missing} does not exist" in info.value.message

    # a key that does not belong to the certificate
    config = parse_config(
        node_settings(
            tmp_path,
            **{
                "network.tls": {
                    "enabled": True,
                    "certificate": str(pki.server_cert),
                    "private_key": str(pki.client_key),
                }
            },
        ),
        "node.yaml",
        environ={},
    )
    with pytest.raises(TlsSetupError) as info:
        NodeService(config, completion_interval_s=0).start()
    assert "cannot load" in info.value.message and str(pki.server_cert) in info.value.message


def test_port_probes_silent_connections_and_failed_handshakes_on_the_tls_port(
    make_config: Callable[..., SegNodeConfig],
    start_node: StartNode,
    pki: Pki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one association slot: 20 probes (half reset), a connection that sends nothing and one that
    stalls in the middle of its TLS handshake take no slot; a plain-TCP association to the TLS port is one
    WARNING line without a traceback; stopping closes every connection."""
    node = start_node(
        make_config(
            **tls_settings(
                pki,
                **{
                    "network.max_associations": 1,
                    "network.acse_timeout_s": 30,
                    "network.network_timeout_s": 60,
                },
            )
        )
    )
    for number in range(20):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
            if number % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    silent = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    stalled = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    stalled.sendall(b"\x16\x03\x01\x02\x00")  # a TLS record header announcing a ClientHello, then nothing
    try:
        assert node.server is not None
        wait_until(lambda: node.server is not None and node.server.probes == 20, what="the probes seen")
        secure = associate(node.port, tls=client_context(pki.ca))
        assert secure.is_established
        assert int(secure.send_c_echo().Status) == status.SUCCESS
        secure.release()
        caplog.clear()
        caplog.set_level(logging.INFO)
        plain = associate(node.port, tls=None, timeout_s=5)
        assert not plain.is_established
        wait_until(
            lambda: len(audit.events(node.db, "connection_closed")) == 1, what="closed connection recorded"
        )
        node_records = [r for r in caplog.records if not r.name.startswith("pynetdicom.acse")]
        loud = [r for r in node_records if r.levelno >= logging.WARNING]  # pynetdicom.acse: the SCU's side
        assert [r.levelno for r in loud] == [logging.WARNING], [r.getMessage() for r in loud]
        assert "SSL" in loud[0].getMessage()
        assert not any(r.exc_info or r.exc_text for r in caplog.records)
        server = node.server
        node.stop()
        wait_until(lambda: not server.active_associations, what="every connection's threads ended")
    finally:
        silent.close()
        stalled.close()
