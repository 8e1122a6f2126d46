"""DICOM over TLS for the SCP (PS3.15 Annex B; BCP 195 profile: TLS 1.2 or later).

:func:`server_context` turns ``network.tls`` into an :class:`ssl.SSLContext` for pynetdicom's
``start_server(ssl_context=...)``; :func:`client_context` builds the matching context for an SCU
(``AE.associate(tls_args=(context, server_hostname))``).

pynetdicom wraps each accepted socket in the server's accept loop. A plain ``SSLContext`` would run the
handshake right there, so one peer that connects and stays silent would hold up every other connection.
The context returned here therefore defers the handshake to the association's own thread (OpenSSL runs it
on the first read) and puts a timeout on the socket, so a stalled or plain-TCP peer only costs its own
thread and is closed.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from config.errors import SegNodeError
from config.node import TlsConfig, TlsVersion

LOG = logging.getLogger(__name__)

_VERSIONS = {TlsVersion.tls1_2: ssl.TLSVersion.TLSv1_2, TlsVersion.tls1_3: ssl.TLSVersion.TLSv1_3}


class TlsSetupError(SegNodeError):
    """A certificate, key or CA file of ``network.tls`` cannot be used; the message names key and file."""

    reason = "tls_setup_failed"


class DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose sockets do their handshake in the association thread, with a timeout."""

    handshake_timeout_s: float = 30.0

    def wrap_socket(  # type: ignore[override]
        self, sock: socket.socket, server_side: bool = False, **kwargs: Any
    ) -> ssl.SSLSocket:
        if server_side:
            sock.settimeout(self.handshake_timeout_s)
            kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, server_side=server_side, **kwargs)


def _existing(path: Path | None, key: str) -> str:
    if path is None:
        raise TlsSetupError(f"network.tls.{key} is not set")
    if not path.is_file():
        raise TlsSetupError(f"network.tls.{key}: {path} does not exist or is not a file")
    return str(path)


def server_context(tls: TlsConfig, handshake_timeout_s: float = 30.0) -> ssl.SSLContext | None:
    """The SCP's TLS context, or ``None`` when TLS is disabled. Raises :class:`TlsSetupError`."""
    if not tls.enabled:
        return None
    certificate = _existing(tls.certificate, "certificate")
    private_key = _existing(tls.private_key, "private_key")
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.handshake_timeout_s = handshake_timeout_s
    context.minimum_version = _VERSIONS[tls.min_version]
    try:
        context.load_cert_chain(certificate, private_key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(
            f"network.tls.certificate/private_key: cannot load {certificate} with {private_key}: {exc}"
        ) from exc
    if tls.ca_certificates is not None:
        ca = _existing(tls.ca_certificates, "ca_certificates")
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError(f"network.tls.ca_certificates: cannot load {ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    LOG.info(
        "TLS enabled (minimum %s, client certificates %s)",
        tls.min_version.value,
        "required" if tls.require_client_certificate else "not required",
    )
    return context


def client_context(
    ca_certificates: Path,
    certificate: Path | None = None,
    private_key: Path | None = None,
    min_version: TlsVersion = TlsVersion.tls1_2,
) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca_certificates`` (host name included) and
    presents ``certificate``/``private_key`` when given: for the C-STORE SCU and for tests."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_certificates))
    context.minimum_version = _VERSIONS[min_version]
    if certificate is not None:
        context.load_cert_chain(str(certificate), None if private_key is None else str(private_key))
    return context
