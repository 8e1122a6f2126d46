"""Notifications against a local webhook receiver and a local SMTP server with STARTTLS (aiosmtpd, a test
certificate): one per incident, retried while the receiver is down, rate-limited, audited, no patient data.

A node runs the real pipeline; the test-only failpoint makes the inference of the series fail (a job failed
for good), the destination listens nowhere (unreachable), and the spool's free space is an injected probe.
The notifier's thread waits an hour between looks: the test makes each look itself (``run_once``).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from dicom_node.audit.tables import Event, Job
from dicom_node.failpoints import Failpoints
from dicom_node.http.notify import series_hash
from dicom_node.service import NodeService
from tests.security.security_pki import make_pki
from tests.support import audit
from tests.support.node import running_nodes
from tests.support.paths import MODELS, T2_SAG, series_files
from tests.support.ports import free_port
from tests.support.scu import send_series
from tests.support.series import modified_copies
from tests.support.settings import config_maker
from tests.support.waiting import wait_until

PATIENT_ID, PATIENT_NAME = "PHI-ID-0815", "Roe^Richard^Phiwatch"


class _Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((dict(self.headers), body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Receivers:
    hook_port: int
    smtp_port: int
    hooks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    mails: list[tuple[bytes, bool]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start_webhook(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.hook_port), _Hook)
        server.received = self.hooks  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def payloads(self, event: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(body) for _, body in self.hooks]
        return [p for p in out if event is None or p["event"] == event]


class _MailBox:
    def __init__(self, mails: list[tuple[bytes, bool]]) -> None:
        self.mails = mails

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((bytes(envelope.content), session.ssl is not None))
        return "250 OK"


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Receivers]:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    found = Receivers(free_port(), free_port())
    smtp = Controller(
        _MailBox(found.mails),
        hostname="127.0.0.1",
        port=found.smtp_port,
        tls_context=context,
        require_starttls=True,
    )
    smtp.start()
    (tmp_path / "ca.pem").write_bytes(pki.ca.read_bytes())
    try:
        yield found
    finally:
        smtp.stop()
        found.stop()


def _settings(tmp_path: Path, r: Receivers, **more: Any) -> dict[str, Any]:
    return {
        "completion.on_association_release": True,
        "storage.min_free_space_mb": 100,
        "privacy.store_patient_name": True,
        "pipeline.work_dir": str(tmp_path / "work"),
        "pipeline.outbox_dir": str(tmp_path / "outbox"),
        "pipeline.warm_up": False,
        "pipeline.poll_interval_s": 0.2,
        "inference.weights_dir": str(MODELS),
        "inference.device": "cpu",
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
        "sending.connect_timeout_s": 2,
        "routes": [
            {
                "name": "mr",
                "match": {"modality": "MR"},
                "action": {"tasks": ["total_mr"], "outputs": ["seg"], "destinations": ["pacs"]},
            }
        ],
        "http.destination_echo_interval_s": 0.2,
        "notifications": {
            "webhooks": [{"name": "ops", "url": f"http://127.0.0.1:{r.hook_port}/segnode"}],
            "email": {
                "host": "127.0.0.1",
                "port": r.smtp_port,
                "starttls": True,
                "ca_certificates": str(tmp_path / "ca.pem"),
                "sender": "segnode@example.org",
                "recipients": ["pacs-admins@example.org"],
            },
            "check_interval_s": 3600,
            "retry_initial_delay_s": 0.05,
            "retry_max_delay_s": 0.2,
            "destination_down_minutes": 0.001,
            "max_per_hour": 3,
            **more,
        },
    }


def _send(port: int, folder: Path, target: Path) -> str:
    files = modified_copies(folder, target, PatientID=PATIENT_ID, PatientName=PATIENT_NAME)
    assert send_series(port, files) == [0x0000] * len(files)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _events(service: NodeService, prefix: str = "notification_") -> list[Event]:
    return audit.rows(service.db, Event, Event.what.like(f"{prefix}%"))


def _look_until(service: NodeService, done: Any, what: str) -> None:
    """Let the notifier look (and send what is due) until ``done()``; a receiver that is down is retried."""
    notifier = service.operations.notifier

    def look() -> bool:
        notifier.run_once()
        return bool(done())

    wait_until(look, timeout_s=60, what=what)


def test_incidents_are_notified_once_retried_rate_limited_audited_and_without_patient_data(
    tmp_path: Path, receivers: Receivers
) -> None:
    free = {"bytes": 50 * 1024**3}
    uid = str(pydicom.dcmread(series_files(T2_SAG)[0], stop_before_pixels=True).SeriesInstanceUID)
    config = config_maker(tmp_path)(**_settings(tmp_path, receivers))
    failpoints = Failpoints(fail_prediction_series=frozenset({uid}))
    with running_nodes(completion_interval_s=0.2, process_jobs=True) as start:
        service = start(config, failpoints=failpoints, free_space_probe=lambda path: free["bytes"])
        _send(service.port, T2_SAG, tmp_path / "sent")

        def failed() -> bool:
            with service.db.read() as session:
                return (
                    session.scalars(select(Job.state).where(Job.series_instance_uid == uid)).first()
                    == "failed"
                )

        wait_until(failed, timeout_s=300, what="the job failed (injected inference failure)")
        wait_until(
            lambda: service.metrics.destinations.get("pacs").down_for_s(service.clock()) > 0.1,
            timeout_s=60,
            what="the destination known down for longer than destination_down_minutes",
        )
        # the webhook receiver is down: the e-mails go out, the webhook waits for its retry
        notifier = service.operations.notifier
        notifier.run_once()
        assert not receivers.hooks and len(receivers.mails) == 2
        assert [e.what for e in _events(service) if e.detail.startswith("webhook")] == [
            "notification_failed"
        ] * 2
        receivers.start_webhook()
        _look_until(service, lambda: len(receivers.hooks) == 2, "both incidents at the webhook after retries")
        for _ in range(3):  # more looks: the same incidents are not notified again
            notifier.run_once()
        assert len(receivers.hooks) == 2 and len(receivers.mails) == 2
        (job,) = receivers.payloads("job_failed")
        assert job["job"]["stage"] == "segmenting" and job["job"]["reason"] == "inference_failed"
        assert job["job"]["series_uid_hash"] == series_hash(uid) and "series_instance_uid" not in job["job"]
        (down,) = receivers.payloads("destination_unreachable")
        assert (
            down["destination"]["name"] == "pacs"
            and down["destination"]["last_outcome"] == "peer_unreachable"
        )
        # the spool runs low: a third incident, once; the fourth exceeds max_per_hour (3) and is suppressed
        free["bytes"] = 0
        notifier.run_once()
        notifier.run_once()
        assert [p["event"] for p in receivers.payloads()].count("spool_low") == 1
        free["bytes"] = 50 * 1024**3
        notifier.run_once()
        free["bytes"] = 0
        notifier.run_once()
        assert [p["event"] for p in receivers.payloads()].count("spool_low") == 1
        suppressed = [e for e in _events(service) if e.what == "notification_suppressed"]
        assert len(suppressed) == 2 and all(e.reason.startswith("spool_low:") for e in suppressed)
        mails = [message_from_bytes(raw) for raw, _ in receivers.mails]
        assert len(mails) == 3 and all(tls for _, tls in receivers.mails)  # STARTTLS before every message
        assert f"job {job['job']['id']} failed (segmenting: inference_failed)" in mails[0]["Subject"]
        sent = [e for e in _events(service) if e.what == "notification_sent"]
        assert len(sent) == 6 and {e.reason for e in sent} == {
            job["incident"],
            down["incident"],
            _spool(receivers),
        }
        everything = b"\n".join([b for _, b in receivers.hooks] + [m for m, _ in receivers.mails])
        for secret in (PATIENT_ID.encode(), b"Phiwatch", b"Roe", uid.encode()):
            assert secret not in everything, secret


def _spool(r: Receivers) -> str:
    (payload,) = r.payloads("spool_low")
    return str(payload["incident"])


def test_a_restarted_node_does_not_notify_an_incident_again(tmp_path: Path, receivers: Receivers) -> None:
    uid = str(pydicom.dcmread(series_files(T2_SAG)[0], stop_before_pixels=True).SeriesInstanceUID)
    settings = _settings(tmp_path, receivers, events=["job_failed"])
    config = config_maker(tmp_path)(**settings)
    receivers.start_webhook()
    with running_nodes(completion_interval_s=0.2, process_jobs=True) as start:
        service = start(config, failpoints=Failpoints(fail_prediction_series=frozenset({uid})))
        _send(service.port, T2_SAG, tmp_path / "sent")
        _look_until(service, lambda: len(receivers.hooks) == 1, "the failed job notified")
        service.stop()
        again = start(config)
        again.operations.notifier.run_once()
        assert len(receivers.hooks) == 1 and len(receivers.mails) == 1
