"""Credentials of the HTTP service: secrets from the environment, basic and bearer checks, the dashboard's
signed session cookie, and the configuration shown over HTTP without its secrets."""

from __future__ import annotations

import base64

import pytest

from config.http import HttpConfig, HttpRole
from config.loader import parse_config
from dicom_node.http.api import redacted_config
from dicom_node.http.auth import AuthFailure, Credentials, Principal, RefusalLog, SessionSigner

CONFIG = HttpConfig.model_validate(
    {
        "users": [
            {"name": "admin", "role": "admin", "password_env": "A_PW"},
            {"name": "viewer", "password_env": "V_PW"},
            {"name": "nobody", "password_env": "UNSET_PW"},
        ],
        "tokens": [{"name": "prometheus", "token_env": "P_TOKEN"}],
    }
)
ENV = {"A_PW": "s3cret:with:colons", "V_PW": "view", "P_TOKEN": "tok-123"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_users_and_tokens_take_their_secrets_from_the_environment() -> None:
    creds = Credentials(CONFIG, ENV)
    assert creds.unusable == [("nobody", "UNSET_PW")]
    assert creds.authenticate(basic("admin", "s3cret:with:colons")) == Principal(
        "admin", HttpRole.admin, "user"
    )
    assert creds.authenticate(basic("viewer", "view")) == Principal("viewer", HttpRole.read_only, "user")
    assert creds.authenticate("Bearer tok-123") == Principal("prometheus", HttpRole.read_only, "token")
    assert creds.authenticate(basic("nobody", "")) == AuthFailure("wrong_credentials", "nobody")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_credentials"),
        ("  ", "missing_credentials"),
        ("Bearer tok-124", "wrong_credentials"),
        ("Basic !!!not-base64", "wrong_credentials"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "wrong_credentials"),
        (basic("admin", "view"), "wrong_credentials"),
        ("Digest username=admin", "unsupported_scheme"),
    ],
)
def test_bad_credentials_are_refused_with_a_reason(header: str | None, reason: str) -> None:
    found = Credentials(CONFIG, ENV).authenticate(header)
    assert isinstance(found, AuthFailure) and found.reason == reason


def test_session_cookies_cannot_be_forged_outlive_their_time_or_their_user() -> None:
    creds = Credentials(CONFIG, ENV)
    signer = SessionSigner(creds, ttl_s=60)
    cookie, session = signer.issue(Principal("viewer", HttpRole.read_only, "user"))
    checked = signer.verify(cookie)
    assert checked is not None and checked.principal.name == "viewer" and checked.csrf == session.csrf
    payload, mac = cookie.split(".")
    forged = base64.urlsafe_b64encode(b'{"u":"admin","e":9999999999,"c":"x"}').rstrip(b"=").decode()
    assert signer.verify(f"{forged}.{mac}") is None
    assert signer.verify(cookie + "x") is None and signer.verify(None) is None
    assert SessionSigner(creds, ttl_s=60).verify(cookie) is None  # another key: a restarted node
    assert SessionSigner(creds, ttl_s=-1).verify(SessionSigner(creds, -1).issue(session.principal)[0]) is None
    fewer = Credentials(CONFIG, {"A_PW": "x"})  # the viewer's password was removed from the environment
    assert SessionSigner(fewer, 60, signer._key).verify(cookie) is None


def test_refusals_written_to_the_audit_log_are_capped_per_minute() -> None:
    log = RefusalLog(per_minute=2)
    assert [log.admit() for _ in range(4)] == [(True, 0), (True, 0), (False, 0), (False, 0)]


def test_the_configuration_shown_over_http_has_no_secret() -> None:
    config = parse_config(
        {
            "database": {"url": "postgresql+psycopg://segnode:db-pass-99@db.example.org/segnode"},
            "privacy": {"patient_id": "hashed", "patient_id_salt": "salt-77"},
            "notifications": {
                "webhooks": [{"name": "chat", "url": "https://hooks.example.org/services/T0/B1/secretpath"}]
            },
            "http": {"users": [{"name": "admin", "password_env": "A_PW"}]},
        },
        environ={},
    )
    shown = redacted_config(config)
    text = repr(shown)
    for secret in ("db-pass-99", "salt-77", "secretpath", "T0/B1"):
        assert secret not in text, secret
    assert shown["notifications"]["webhooks"][0]["url"] == "https://hooks.example.org/***"
    assert shown["http"]["users"][0]["password_env"] == "A_PW"
