"""``segnode models list | download | import | check``: real HTTP server on 127.0.0.1, real files."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main
from inference import registry
from tests.support.cli import run_segnode
from tests.support.models import make_model_folder, write_zip
from tests.support.ports import free_port
from tests.support.settings import inference_settings

M756 = registry.get_part_model(756)


@pytest.fixture()
def release_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 (port 0) whose root mirrors the GitHub release layout."""
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_list_shows_state_licence_size_and_missing_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights_dir = tmp_path / "weights"
    make_model_folder(weights_dir, M756, checkpoint=b"x" * 2000)
    make_model_folder(weights_dir, registry.get_part_model(852))
    config = inference_settings(tmp_path / "node.yaml", weights_dir)
    assert main(["models", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"weights folder: {weights_dir} (configuration inference.weights_dir)"
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert rows["vertebrae_mr"][1:4] == ["installed", "no", "25"]
    assert rows["total_mr"][1:5] == ["partial", "no", "50", "fast"] and rows["total_mr"][-3:] == [
        "850",
        "851",
        "853",
    ]
    assert rows["face_mr"][1:4] == ["missing", "yes", "1"]
    assert main(["models", "list", "--config", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["weights_dir"] == str(weights_dir)
    tasks = {t["task"]: t for t in document["tasks"]}
    assert tasks["vertebrae_mr"]["state"] == "installed" and tasks["vertebrae_mr"]["size_bytes"] > 2000
    assert tasks["total_mr"]["modes"] == {"default": False, "fast": True, "fastest": False}
    assert tasks["thigh_shoulder_muscles_mr"]["licensed"] is True and tasks["total_mr"]["structures"] == 50


def test_download_from_the_configured_location_then_check(
    tmp_path: Path, release_server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = release_server
    make_model_folder(tmp_path / "src", M756)
    write_zip(
        tmp_path / "src" / M756.dataset_folder_name,
        root / "download" / str(M756.release) / f"{M756.dataset_folder_name}.zip",
    )
    weights_dir = tmp_path / "weights"
    config = inference_settings(tmp_path / "node.yaml", weights_dir, weights_base_url=f"{base}/download")
    assert main(["models", "download", "vertebrae_mr", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"installed: {M756.model_dir(weights_dir)}\n"
    assert f"{M756.dataset_folder_name}: [" in captured.err and "100%" in captured.err  # progress on stderr
    assert main(["models", "check", "vertebrae_mr", "--config", str(config)]) == 0
    assert f"dataset 756 in {M756.model_dir(weights_dir)}" in capsys.readouterr().out


def test_download_while_offline_fails_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = inference_settings(
        tmp_path / "n.yaml", tmp_path / "w", weights_base_url=f"http://127.0.0.1:{port}/rel"
    )
    result = run_segnode("models", "download", "vertebrae_mr", "--config", str(config), "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("error [offline]: cannot reach http://127.0.0.1:")
    assert f"/rel/v2.5.0-weights/{M756.dataset_folder_name}.zip" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_weights_via_the_cli(tmp_path: Path) -> None:
    config = inference_settings(tmp_path / "n.yaml", tmp_path / "empty-weights")
    result = run_segnode("models", "check", "total_mr", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("error [missing_weights]: weights for task total_mr are not installed")
    assert str(tmp_path / "empty-weights" / "Dataset850_TotalSegMRI_part1_organs_1088subj") in result.stderr
    assert "segnode models download total_mr" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_import_zip_and_broken_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights_dir = tmp_path / "weights"
    config = inference_settings(tmp_path / "n.yaml", weights_dir)
    make_model_folder(tmp_path / "src", M756)
    archive = write_zip(tmp_path / "src" / M756.dataset_folder_name, tmp_path / "usb" / "vertebrae.zip")
    assert main(["models", "import", str(archive), "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"installed: {M756.model_dir(weights_dir)} (dataset 756)\n"
    m597 = registry.get_part_model(597)
    make_model_folder(tmp_path / "broken", m597)
    m597.checkpoint_path(tmp_path / "broken").unlink()
    assert main(["models", "import", str(tmp_path / "broken"), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error [invalid_weights]:") and "checkpoint_final.pth is missing" in err


def test_licensed_and_unknown_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = inference_settings(tmp_path / "n.yaml", tmp_path / "w")
    assert main(["models", "download", "tissue_types_mr", "--config", str(config)]) == 1
    assert capsys.readouterr().err.startswith("error [license_required]: task tissue_types_mr needs a")
    assert main(["models", "download", "total_ct", "--config", str(config)]) == 1
    assert "error [unknown_task]: unknown task 'total_ct'" in capsys.readouterr().err
