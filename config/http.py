"""Configuration of the node's HTTP service: REST API, Prometheus metrics and the web dashboard.

Secrets never sit in the YAML file: each user or token names the environment variable that holds its
password or token (``password_env: SEGNODE_ADMIN_PASSWORD``). An entry whose variable is unset or empty
when the node starts cannot log in (the node logs a warning naming the variable).
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def check_env_name(value: str) -> str:
    """An environment variable name (letters, digits, underscores; not starting with a digit)."""
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an environment variable name (letters, digits and _; the secret itself "
            "goes into that variable, never into this file)"
        )
    return value


class HttpRole(StrEnum):
    """What a user or token may do: ``read_only`` sees everything (secrets redacted); ``admin`` may also
    retry, resend and cancel jobs."""

    read_only = "read_only"
    admin = "admin"


class HttpUser(BaseModel):
    """A person (or a scraper) that logs in with a user name and a password (HTTP basic or the dashboard's
    login form)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="User name (letters, digits, . _ @ -; at most 64 characters).")
    role: HttpRole = Field(default=HttpRole.read_only, description="read_only or admin.")
    password_env: str = Field(description="Environment variable that holds the password.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _USER_NAME.fullmatch(value):
            raise ValueError("must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
        return value

    @field_validator("password_env")
    @classmethod
    def _env(cls, value: str) -> str:
        return check_env_name(value)


class HttpToken(BaseModel):
    """A bearer token (``Authorization: Bearer <token>``), e.g. for Prometheus or a monitoring script."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name of the token, shown in the audit log (never the token).")
    role: HttpRole = Field(default=HttpRole.read_only, description="read_only or admin.")
    token_env: str = Field(description="Environment variable that holds the token.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return HttpUser._name(value)

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str) -> str:
        return check_env_name(value)


class HttpTlsConfig(BaseModel):
    """HTTPS for the API and the dashboard."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Serve HTTPS only (plain HTTP is then refused).")
    certificate: Path | None = Field(default=None, description="PEM certificate (with intermediates).")
    private_key: Path | None = Field(default=None, description="PEM private key of the certificate.")

    @model_validator(mode="after")
    def _complete(self) -> HttpTlsConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("TLS is enabled: certificate and private_key are required")
        return self


class HttpConfig(BaseModel):
    """The HTTP service inside ``segnode serve``: API, ``/metrics`` and the dashboard, on one port."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Run the HTTP service (config/example.yaml: true).")
    bind_address: str = Field(
        default="127.0.0.1",
        description="Address to listen on; 127.0.0.1 keeps it on this machine (put a reverse proxy or "
        "tls in front before opening it to the network).",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port (0: an ephemeral port, tests).")
    tls: HttpTlsConfig = Field(default_factory=HttpTlsConfig, description="HTTPS.")
    users: list[HttpUser] = Field(
        default_factory=list, description="Users who log in with a name and a password."
    )
    tokens: list[HttpToken] = Field(default_factory=list, description="Bearer tokens (scrapers, scripts).")
    session_minutes: float = Field(
        default=480, gt=0, le=7 * 24 * 60, description="Minutes a dashboard login stays valid."
    )
    show_patient_data: bool = Field(
        default=False,
        description="Show Patient ID / Name / Birth Date (where the audit database keeps them) in the API "
        "and the dashboard; false: never sent over HTTP.",
    )
    dashboard_refresh_s: float = Field(
        default=10, ge=0, description="Seconds between two refreshes of the dashboard's tables (0: off)."
    )
    destination_echo_interval_s: float = Field(
        default=60,
        ge=0,
        description="Seconds between two C-ECHO checks of each destination (their health on the dashboard, "
        "readiness and notifications; 0: only send attempts tell).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> HttpConfig:
        names = [u.name for u in self.users] + [t.name for t in self.tokens]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"user/token name(s) listed twice: {', '.join(doubled)}")
        return self
