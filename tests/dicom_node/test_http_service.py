"""The HTTP service of an in-process node over real HTTP: patient data only where configured, readiness
when the spool runs low, HTTPS, a port already taken, and the dashboard's login form."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.errors import SegNodeError
from dicom_node.service import NodeService
from tests.security.security_pki import make_pki
from tests.support.node import running_nodes
from tests.support.paths import T2_SAG, series_files
from tests.support.scu import associate, send_series
from tests.support.series import modified_copies
from tests.support.settings import config_maker
from tests.support.waiting import wait_until

ENV = {"T_ADMIN_PW": "pw-admin-1", "T_VIEW_PW": "pw-view-1"}
PATIENT_ID, PATIENT_NAME = "PHI-ID-2024", "Poe^Edgar^Phiwatch"


def _http(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {
        "http": {
            "enabled": True,
            "port": 0,
            "users": [
                {"name": "admin", "role": "admin", "password_env": "T_ADMIN_PW"},
                {"name": "viewer", "password_env": "T_VIEW_PW"},
            ],
            **more,
        },
        "privacy.store_patient_name": True,
        "storage.min_free_space_mb": 100,
    }


def _get(url: str, user: str | None = "viewer", context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if user:
        secret = ENV["T_ADMIN_PW" if user == "admin" else "T_VIEW_PW"]
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _send(port: int, folder: Path) -> None:
    """Three instances of the sagittal series, with patient data, C-STOREd to the node."""
    files = modified_copies(series_files(T2_SAG)[:3], folder, PatientID=PATIENT_ID, PatientName=PATIENT_NAME)
    assert send_series(port, files) == [0x0000] * len(files)


def _start(tmp_path: Path, start: Callable[..., NodeService], **settings: Any) -> NodeService:
    config = config_maker(tmp_path)(**settings)
    return start(config)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("shown", [False, True])
def test_patient_data_reaches_http_only_where_configured(tmp_path: Path, shown: bool) -> None:
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        node = _start(tmp_path, start, **_http(tmp_path, show_patient_data=shown))
        _send(node.port, tmp_path / "sent")
        base = f"http://127.0.0.1:{node.http_port}"
        status, body = _get(base + "/api/series")
        (series,) = json.loads(body)
        assert status == 200 and series["instance_count"] == 3
        assert ("patient_id" in series, "patient_name" in series) == (shown, shown)
        if shown:
            assert (series["patient_id"], series["patient_name"]) == (PATIENT_ID, PATIENT_NAME)
        status, audit = _get(base + "/api/audit?table=series")
        assert status == 200 and (PATIENT_NAME.encode() in audit) is shown
        # the series states filter the list; a state that does not exist is refused, naming the valid ones
        assert [s["state"] for s in json.loads(_get(base + "/api/series?state=open")[1])] == ["open"]
        assert json.loads(_get(base + "/api/series?state=complete")[1]) == []
        status, body = _get(base + "/api/series?state=closed")
        assert status == 422 and b"open" in body and b"complete" in body, body


@pytest.mark.usefixtures("env")
def test_readiness_fails_when_the_spool_is_below_its_watermark(tmp_path: Path) -> None:
    free = {"bytes": 10 * 1024**3}
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        node = start(config_maker(tmp_path)(**_http(tmp_path)), free_space_probe=lambda path: free["bytes"])
        url = f"http://127.0.0.1:{node.http_port}/api/ready"
        status, body = _get(url)
        assert status == 200 and json.loads(body)["status"] == "ready"
        free["bytes"] = 5 * 1024**2
        status, body = _get(url)
        report = json.loads(body)
        spool = next(c for c in report["checks"] if c["name"] == "spool")
        assert status == 503 and report["status"] == "not_ready" and not spool["ok"]
        assert "below the watermark of 100 MiB" in spool["detail"]


@pytest.mark.usefixtures("env")
def test_https_with_the_configured_certificate(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = {"enabled": True, "certificate": str(pki.server_cert), "private_key": str(pki.server_key)}
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        node = _start(tmp_path, start, **_http(tmp_path, tls=tls))
        context = ssl.create_default_context(cafile=str(pki.ca))
        status, _ = _get(f"https://127.0.0.1:{node.http_port}/api/health", context=context)
        assert status == 200
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/api/health", timeout=30)


@pytest.mark.usefixtures("env")
def test_a_taken_port_stops_the_node_at_start_with_the_key_to_change(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running_nodes(completion_interval_s=0, process_jobs=False) as start:
            with pytest.raises(SegNodeError) as caught:
                _start(tmp_path, start, **_http(tmp_path, port=port))
    assert caught.value.reason == "http_start_failed"
    assert (
        f"cannot listen on 127.0.0.1:{port}" in caught.value.message and "http.port" in caught.value.message
    )


@pytest.mark.usefixtures("env")
def test_dashboard_login_form_refuses_wrong_passwords_and_other_origins(tmp_path: Path) -> None:
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        node = _start(tmp_path, start, **_http(tmp_path))
        base = f"http://127.0.0.1:{node.http_port}"

        def login(password: str, origin: str) -> tuple[int, str, str]:
            data = f"user=admin&password={password}&next=/dashboard".encode()
            request = urllib.request.Request(base + "/login", data=data, method="POST")
            request.add_header("Origin", origin)
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
            opener = urllib.request.build_opener(_NoRedirect)
            try:
                with opener.open(request, timeout=60) as answer:
                    return answer.status, answer.headers.get("Set-Cookie", ""), answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Set-Cookie", ""), exc.read().decode()

        status, cookie, page = login("wrong", base)
        assert status == 401 and not cookie and "Wrong user name or password." in page
        status, cookie, _ = login(ENV["T_ADMIN_PW"], "http://evil.example")
        assert status == 403 and not cookie
        status, cookie, _ = login(ENV["T_ADMIN_PW"], base)
        assert status == 303 and "segnode_session=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        page_status, page_body = _get(base + "/dashboard", user=None)  # follows the redirect to the form
        assert page_status == 200 and b'id="login"' in page_body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.mark.usefixtures("env")
def test_metrics_count_refused_instances_and_rejected_associations(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    settings = {**_http(tmp_path), "storage.max_series_instances": 2}
    with running_nodes(completion_interval_s=0, process_jobs=False) as start:
        node = _start(tmp_path, start, **settings)
        assert send_series(node.port, series_files(T2_SAG)[:3]) == [0, 0, 0xA700]
        assert associate(node.port, "STRANGER").is_rejected

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            status, body = _get(f"http://127.0.0.1:{node.http_port}/metrics")
            assert status == 200
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples
            }

        released = ("segnode_associations_total", (("outcome", "released"),))
        wait_until(lambda: scrape().get(released) == 1, timeout_s=60, what="the release recorded")
        samples = scrape()
    assert samples[("segnode_instances_received_total", ())] == 2
    assert samples[("segnode_instances_refused_total", (("reason", "out_of_resources"),))] == 1
    assert samples[("segnode_associations_total", (("outcome", "accepted"),))] == 1
    assert samples[("segnode_associations_total", (("outcome", "released"),))] == 1
    assert samples[("segnode_associations_total", (("outcome", "rejected"),))] == 1
