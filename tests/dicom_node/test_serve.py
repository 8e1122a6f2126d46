"""``segnode serve`` without --config: embedded defaults (config/example.yaml) plus SEGNODE__* overrides."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.support.dcmtk import dcmtk
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.e2e


def test_serve_on_embedded_defaults_answers_echo_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {
        "SEGNODE__NETWORK__BIND_ADDRESS": "127.0.0.1",
        "SEGNODE__NETWORK__PORT": "0",
        "SEGNODE__STORAGE__MIN_FREE_SPACE_MB": "0",
        "SEGNODE__HTTP__PORT": "0",
        "SEGNODE_ADMIN_PASSWORD": "correct horse",
    }
    # awaited with a C-ECHO from PACS, the one caller example.yaml allows
    node = ServeProcess(tmp_path, env=env, echo=("SEGNODE", "PACS"))
    try:
        port = str(node.start())
        log = node.log_text()
        assert re.search(rf"SegNode listening on 127\.0\.0\.1:{port} as SEGNODE", log)
        # the embedded defaults run the dashboard and the API on loopback, behind the admin's password
        web = re.search(r"dashboard, API and metrics on http://127\.0\.0\.1:(\d+)/", log)
        assert web, log
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
        code = node.stop()
    text = node.log_text()
    assert code == 0, text
    assert "received SIGTERM, shutting down" in text and "SegNode stopped" in text
    # the embedded defaults: a SQLite file and a spool folder in the working directory
    assert (tmp_path / "segnode.db").is_file() and (tmp_path / "spool").is_dir()
    # log records carry the association id
    assert re.search(r"\[assoc=\d+ job=-\]: rejecting association ECHOSCU -> SEGNODE", text), text
