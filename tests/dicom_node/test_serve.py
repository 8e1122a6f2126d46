"""``segnode serve`` without --config: embedded defaults (config/example.yaml) plus SEGNODE__* overrides."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from node_support import dcmtk

pytestmark = pytest.mark.e2e


def test_serve_on_embedded_defaults_answers_echo_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGNODE__")}
    env |= {
        "SEGNODE__NETWORK__BIND_ADDRESS": "127.0.0.1",
        "SEGNODE__NETWORK__PORT": "0",
        "SEGNODE__STORAGE__MIN_FREE_SPACE_MB": "0",
        "SEGNODE__HTTP__PORT": "0",
        "SEGNODE_ADMIN_PASSWORD": "correct horse",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve"], cwd=tmp_path, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while not (
            found := re.search(r"SegNode listening on 127\.0\.0\.1:(\d+) as SEGNODE", log.read_text())
        ):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = found.group(1)
        # the embedded defaults run the dashboard and the API on loopback, behind the admin's password
        web = re.search(r"dashboard, API and metrics on http://127\.0\.0\.1:(\d+)/", log.read_text())
        assert web, log.read_text()
        url = f"http://127.0.0.1:{web.group(1)}/api/health"
        with pytest.raises(urllib.error.HTTPError) as refused_http:
            urllib.request.urlopen(url, timeout=30)
        assert refused_http.value.code == 401
        request = urllib.request.Request(
            url, headers={"Authorization": "Basic " + b64encode(b"admin:correct horse").decode()}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        # example.yaml lets the calling AE title PACS send to SEGNODE, and nobody else
        ok = subprocess.run(
            [dcmtk("echoscu"), "-aet", "PACS", "-aec", "SEGNODE", "127.0.0.1", port], check=False
        )
        assert ok.returncode == 0
        refused = subprocess.run(
            [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "SEGNODE", "127.0.0.1", port],
            capture_output=True,
            check=False,
        )
        assert refused.returncode != 0
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    text = log.read_text()
    assert code == 0, text
    assert "received SIGTERM, shutting down" in text and "SegNode stopped" in text
    # the embedded defaults: a SQLite file and a spool folder in the working directory
    assert (tmp_path / "segnode.db").is_file() and (tmp_path / "spool").is_dir()
    # log records carry the association id
    assert re.search(r"\[assoc=\d+ job=-\]: rejecting association ECHOSCU -> SEGNODE", text), text
