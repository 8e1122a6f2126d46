"""The real download and extraction code against a local HTTP server (127.0.0.1, port 0) serving zips."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from inference import registry
from inference.registry import PartModel
from inference.weights import (
    DownloadError,
    DownloadLocations,
    InvalidWeightsError,
    LicenseError,
    find_model_folder,
    model_problems,
    weight_sources,
)
from inference.weights_install import download_task
from tests.support.models import make_model_folder, zip_bytes
from tests.support.paths import MODELS
from tests.support.ports import free_port


def model_zip(tmp_path: Path, model: PartModel, checkpoint: bytes = b"tiny checkpoint") -> bytes:
    source = tmp_path / f"src{model.dataset_id}"
    make_model_folder(source, model, checkpoint)
    return zip_bytes(source / model.dataset_folder_name)


@dataclass
class Route:
    body: bytes
    status: int = 200
    content_type: str = "application/zip"
    #: Announce this many bytes but send ``body`` only (a connection that breaks off).
    announced_length: int | None = None


@dataclass
class WeightsServer:
    """What the test server serves and what it was asked."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def locations(self) -> DownloadLocations:
        return replace(
            DownloadLocations.from_config(),
            release_base_url=f"{self.base}/releases/download",
            license_server_url=f"{self.base}/",
        )


@pytest.fixture()
def server() -> Iterator[WeightsServer]:
    state = WeightsServer()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length", 0) or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append((self.command, self.path, body))
            route = state.routes.get(f"{self.command} {self.path}")
            if route is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(route.announced_length or len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)
            if route.announced_length:
                self.close_connection = True

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def release_path(model: PartModel) -> str:
    return f"/releases/download/{model.release}/{model.dataset_folder_name}.zip"


M756 = registry.get_part_model(756)


def test_download_installs_a_task_with_progress_and_leaves_no_temporary_files(
    server: WeightsServer, tmp_path: Path
) -> None:
    checkpoint = os.urandom(1_000_000)  # incompressible: a 1 MB download, several progress steps
    server.routes[f"GET {release_path(M756)}"] = Route(model_zip(tmp_path, M756, checkpoint))
    weights_dir = tmp_path / "weights"
    progress = io.StringIO()
    folders = download_task("vertebrae_mr", weights_dir, locations=server.locations(), progress=progress)
    assert folders == [M756.model_dir(weights_dir)]
    assert find_model_folder(M756, weights_dir) == folders[0]
    assert M756.checkpoint_path(weights_dir).read_bytes() == checkpoint
    assert [(m, p) for m, p, _ in server.requests] == [("GET", release_path(M756))]
    lines = progress.getvalue().splitlines()
    assert lines[-1].startswith(f"{M756.dataset_folder_name}: [") and " 100% " in lines[-1]
    assert len(lines) >= 5  # one line per 10 % when stderr is not a terminal
    assert sorted(p.name for p in weights_dir.iterdir()) == [M756.dataset_folder_name]
    # a second run finds the weights installed and contacts nobody
    download_task("vertebrae_mr", weights_dir, locations=server.locations())
    assert len(server.requests) == 1


def test_download_of_the_real_tiny_models_gives_loadable_checkpoints(
    server: WeightsServer, tmp_path: Path
) -> None:
    for dataset_id in (850, 851):
        model = registry.get_part_model(dataset_id)
        server.routes[f"GET {release_path(model)}"] = Route(zip_bytes(MODELS / model.dataset_folder_name))
    weights_dir = tmp_path / "weights"
    download_task("total_mr", weights_dir, locations=server.locations(), mode="default")
    import torch

    for dataset_id in (850, 851):
        model = registry.get_part_model(dataset_id)
        installed = model.checkpoint_path(weights_dir)
        assert installed.read_bytes() == model.checkpoint_path(MODELS).read_bytes()
        checkpoint = torch.load(installed, map_location="cpu", weights_only=False)
        assert checkpoint["trainer_name"] == model.trainer and "network_weights" in checkpoint


def test_fast_mode_downloads_only_its_model(server: WeightsServer, tmp_path: Path) -> None:
    m852 = registry.get_part_model(852)
    server.routes[f"GET {release_path(m852)}"] = Route(model_zip(tmp_path, m852))
    download_task("total_mr", tmp_path / "w", locations=server.locations(), mode="fast")
    assert [p for _, p, _ in server.requests] == [release_path(m852)]


def test_server_down_is_reported_as_offline_naming_the_url(tmp_path: Path) -> None:
    port = free_port()  # a port nobody listens on
    locations = replace(DownloadLocations.from_config(), release_base_url=f"http://127.0.0.1:{port}/rel")
    with pytest.raises(DownloadError) as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=locations, timeout=5)
    assert info.value.reason == "offline"
    assert f"http://127.0.0.1:{port}/rel/v2.5.0-weights/{M756.dataset_folder_name}.zip" in info.value.message
    assert "segnode models import" in info.value.message
    assert list((tmp_path / "w").iterdir()) == []


def test_http_404_is_a_failed_download_naming_the_url(server: WeightsServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations())
    assert info.value.reason == "download_failed"
    assert "HTTP 404" in info.value.message and release_path(M756) in info.value.message
    assert list((tmp_path / "w").iterdir()) == []


def test_truncated_download_is_detected(server: WeightsServer, tmp_path: Path) -> None:
    payload = model_zip(tmp_path, M756, checkpoint=os.urandom(100_000))
    server.routes[f"GET {release_path(M756)}"] = Route(payload[:5000], announced_length=len(payload))
    with pytest.raises(DownloadError, match=f"truncated: got 5000 of {len(payload)} bytes") as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations())
    assert info.value.reason == "download_failed"
    assert list((tmp_path / "w").iterdir()) == []  # the temporary file is gone


def test_corrupt_zip_is_refused_and_nothing_installed(server: WeightsServer, tmp_path: Path) -> None:
    payload = bytearray(model_zip(tmp_path, M756, checkpoint=bytes(range(256)) * 64))
    for offset in range(300, 340):
        payload[offset] ^= 0x5A
    server.routes[f"GET {release_path(M756)}"] = Route(bytes(payload))
    with pytest.raises(InvalidWeightsError) as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations())
    assert info.value.reason == "corrupt_archive"
    assert release_path(M756) in info.value.message
    assert list((tmp_path / "w").iterdir()) == []


def test_zip_with_the_wrong_layout_is_refused(server: WeightsServer, tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_model_folder(source, M756)
    wrong = zip_bytes(source / M756.dataset_folder_name, arc_root="Dataset756_other_name")
    server.routes[f"GET {release_path(M756)}"] = Route(wrong)
    with pytest.raises(InvalidWeightsError) as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations())
    assert info.value.reason == "invalid_weights"
    assert f"expected the folder(s) {M756.dataset_folder_name}" in info.value.message
    assert "found Dataset756_other_name" in info.value.message
    assert list((tmp_path / "w").iterdir()) == []


def test_sha256_is_checked_when_known(server: WeightsServer, tmp_path: Path) -> None:
    payload = model_zip(tmp_path, M756)
    server.routes[f"GET {release_path(M756)}"] = Route(payload)
    sources = dict(weight_sources())
    sources[756] = replace(sources[756], sha256="0" * 64)
    with pytest.raises(DownloadError) as info:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations(), sources=sources)
    assert info.value.reason == "corrupt_download" and "0" * 64 in info.value.message
    sources[756] = replace(sources[756], sha256=hashlib.sha256(payload).hexdigest())
    download_task("vertebrae_mr", tmp_path / "w", locations=server.locations(), sources=sources)
    assert model_problems(M756, tmp_path / "w") == []


def test_licensed_download_posts_the_licence_to_the_licence_server(
    server: WeightsServer, tmp_path: Path
) -> None:
    m856 = registry.get_part_model(856)
    server.routes["POST /download_weights"] = Route(model_zip(tmp_path, m856))
    download_task("face_mr", tmp_path / "w", locations=server.locations(), license_key="aca_0123456789ABCD")
    (method, path, body), *_ = server.requests
    assert (method, path) == ("POST", "/download_weights")
    assert json.loads(body) == {
        "license_number": "aca_0123456789ABCD",
        "task": "face_mr",
        "version": "2.18.0",
    }
    assert model_problems(m856, tmp_path / "w") == []


def test_licensed_task_without_key_or_with_a_refused_key(server: WeightsServer, tmp_path: Path) -> None:
    with pytest.raises(LicenseError) as info:
        download_task("tissue_types_mr", tmp_path / "w", locations=server.locations())
    assert info.value.reason == "license_required" and "--license-key" in info.value.message
    assert server.requests == []  # nothing asked without a key
    refusal = json.dumps({"status": "invalid_license"}).encode()
    server.routes["POST /download_weights"] = Route(refusal, status=401, content_type="application/json")
    with pytest.raises(LicenseError) as info:
        download_task("tissue_types_mr", tmp_path / "w", locations=server.locations(), license_key="wrong")
    assert info.value.reason == "invalid_license" and "invalid_license" in info.value.message
    server.routes["POST /download_weights"] = Route(refusal, status=200, content_type="application/json")
    with pytest.raises(LicenseError, match="refused the download: invalid_license"):
        download_task("tissue_types_mr", tmp_path / "w", locations=server.locations(), license_key="wrong")


_connections: list[tuple[str, Any]] | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _connections is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _connections.append((event, args[1] if event == "socket.connect" else args[0]))


def test_only_the_configured_download_location_is_contacted(server: WeightsServer, tmp_path: Path) -> None:
    """No usage statistics, no licence check, no other host: every connection goes to the download URL."""
    global _connections, _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: install once, record only inside this test
        sys.addaudithook(_audit)
        _hook_installed = True
    server.routes[f"GET {release_path(M756)}"] = Route(model_zip(tmp_path, M756))
    _connections = []
    try:
        download_task("vertebrae_mr", tmp_path / "w", locations=server.locations())
        from inference.weights import weights_status
        from inference.weights_install import import_weights

        weights_status(tmp_path / "w")
        import_weights(tmp_path / "w" / M756.dataset_folder_name, tmp_path / "w2")
        seen = list(_connections)
    finally:
        _connections = None
    connects = [address for event, address in seen if event == "socket.connect"]
    lookups = [host for event, host in seen if event == "socket.getaddrinfo"]
    assert connects == [("127.0.0.1", server.port)]
    assert set(lookups) <= {"127.0.0.1"}
