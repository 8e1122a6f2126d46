"""The HTTP service as a thread of ``segnode serve``: uvicorn on a socket bound before the thread starts.

Binding first means a port that is taken fails ``segnode serve`` at start with a clear message, and port 0
(tests) gives the real port at once (:attr:`HttpServer.port`).
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from config.errors import SegNodeError
from config.http import HttpConfig

LOG = logging.getLogger(__name__)


class HttpStartError(SegNodeError):
    reason = "http_start_failed"


class HttpServer:
    """Serves an ASGI application with uvicorn in a daemon thread until :meth:`stop`."""

    def __init__(self, app: Any, config: HttpConfig) -> None:
        self.app = app
        self.config = config
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the HTTP service is not started")
        return int(self._socket.getsockname()[1])

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls.enabled else "http"

    def _bind(self) -> socket.socket:
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.bind_address, cfg.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise HttpStartError(
                f"http: cannot listen on {cfg.bind_address}:{cfg.port}: {exc.strerror or exc} "
                "(http.bind_address / http.port)"
            ) from exc
        return sock

    def start(self) -> None:
        import uvicorn

        tls = self.config.tls
        for key, path in (("certificate", tls.certificate), ("private_key", tls.private_key)):
            if tls.enabled and (path is None or not path.is_file()):
                raise HttpStartError(f"http.tls.{key}: {path} does not exist or is not a file")
        self._socket = self._bind()
        settings = uvicorn.Config(
            self.app,
            log_config=None,  # the node's logging configuration applies
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(tls.certificate) if tls.enabled else None,
            ssl_keyfile=str(tls.private_key) if tls.enabled else None,
        )
        self._server = uvicorn.Server(settings)
        sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="segnode-http", daemon=True
        )
        self._thread.start()
        LOG.warning(
            "dashboard, API and metrics on %s://%s:%d/",
            self.scheme,
            self.config.bind_address,
            self.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                LOG.warning("HTTP service still busy at stop")
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
