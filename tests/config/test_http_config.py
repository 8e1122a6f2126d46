"""The http and notifications sections: defaults, example.yaml, and key-path messages for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, default_config, load_config_text
from config.http import HttpRole
from config.notifications import NotificationKind
from tests.support.cli import run_segnode

BAD: list[tuple[str, str, str]] = [
    (
        "secret written into the file instead of a variable name",
        "http:\n  users:\n    - {name: admin, role: admin, password_env: 'hunter2!'}\n",
        "node.yaml: http.users[0].password_env: 'hunter2!' is not an environment variable name",
    ),
    (
        "unknown role",
        "http:\n  users:\n    - {name: admin, role: root, password_env: P}\n",
        "node.yaml: http.users[0].role: must be one of 'read_only' or 'admin', not 'root'",
    ),
    (
        "user listed twice",
        "http:\n  users:\n    - {name: a, password_env: P}\n  tokens:\n    - {name: a, token_env: T}\n",
        "node.yaml: http: user/token name(s) listed twice: a",
    ),
    (
        "TLS without a certificate",
        "http:\n  tls: {enabled: true}\n",
        "node.yaml: http.tls: TLS is enabled: certificate and private_key are required",
    ),
    ("port out of range", "http:\n  port: 70000\n", "node.yaml: http.port: must be <= 65535, not 70000"),
    (
        "unknown http key",
        "http:\n  passwd: x\n",
        "node.yaml: http.passwd: unknown key (allowed: bind_address, dashboard_refresh_s,",
    ),
    (
        "webhook URL without a scheme",
        "notifications:\n  webhooks:\n    - {name: chat, url: chat.example.org/hook}\n",
        "node.yaml: notifications.webhooks[0].url: 'chat.example.org/hook' is not an http:// or https:// URL",
    ),
    (
        "e-mail without recipients",
        "notifications:\n  email: {host: smtp.example.org, sender: a@example.org, recipients: []}\n",
        "node.yaml: notifications.email.recipients: at least one recipient is required",
    ),
    (
        "SMTP user without a password variable",
        "notifications:\n  email: {host: h, sender: a@b.org, recipients: [c@d.org], username: u}\n",
        "node.yaml: notifications.email: username and password_env go together",
    ),
    (
        "unknown notification event",
        "notifications:\n  events: [job_failed, disk_full]\n",
        "node.yaml: notifications.events[1]: must be one of",
    ),
    (
        "negative down time",
        "notifications:\n  destination_down_minutes: -1\n",
        "node.yaml: notifications.destination_down_minutes: must be > 0.0, not -1",
    ),
]


@pytest.mark.parametrize(("kind", "text", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_http_and_notification_values_name_the_key_path(kind: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "node.yaml", environ={})
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_example_yaml_runs_the_dashboard_on_loopback_with_secrets_from_the_environment() -> None:
    config = default_config(environ={})
    http = config.http
    assert http.enabled and http.bind_address == "127.0.0.1" and http.port == 8080
    assert {(u.name, u.role, u.password_env) for u in http.users} == {
        ("admin", HttpRole.admin, "SEGNODE_ADMIN_PASSWORD"),
        ("viewer", HttpRole.read_only, "SEGNODE_VIEWER_PASSWORD"),
    }
    assert [(t.name, t.token_env) for t in http.tokens] == [("prometheus", "SEGNODE_API_TOKEN")]
    assert set(config.notifications.events) == set(NotificationKind)
    assert not config.notifications.include_uids


def test_config_validate_reports_an_http_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("http:\n  users:\n    - {name: admin, password_env: 'a b'}\n", encoding="utf-8")
    result = run_segnode("config", "validate", str(path))
    assert result.returncode == 2
    assert "node.yaml: http.users[0].password_env: 'a b' is not an environment variable name" in result.stderr
