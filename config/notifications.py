"""Configuration of notifications: webhooks (JSON POST) and e-mail (SMTP with STARTTLS).

A notification goes out once per incident: a job that failed for good, a destination unreachable for
more than ``destination_down_minutes``, the spool's free space below ``storage.min_free_space_mb``. It
carries no patient data: the job id, a hash of the Series Instance UID, the stage and the reason code.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config.http import check_env_name


class NotificationKind(StrEnum):
    job_failed = "job_failed"
    destination_unreachable = "destination_unreachable"
    spool_low = "spool_low"


class WebhookConfig(BaseModel):
    """An HTTP(S) endpoint that receives each notification as a JSON POST."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Name shown in the audit log.")
    url: str = Field(description="http:// or https:// URL the JSON is POSTed to.")
    token_env: str | None = Field(
        default=None,
        description="Environment variable with a bearer token sent as 'Authorization: Bearer ...'.",
    )
    ca_certificates: Path | None = Field(
        default=None, description="PEM CA bundle for an https:// URL (unset: the system's CAs)."
    )
    timeout_s: float = Field(default=10, gt=0, le=300, description="Seconds to wait for the receiver.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else check_env_name(value)


class EmailConfig(BaseModel):
    """An SMTP server (submission with STARTTLS) and who gets the mails."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1, description="SMTP server host name.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port (587: submission).")
    starttls: bool = Field(
        default=True,
        description="Upgrade the connection with STARTTLS before anything is sent (refuse to send when the "
        "server does not offer it). false only for a relay on this machine.",
    )
    ca_certificates: Path | None = Field(
        default=None, description="PEM CA bundle the server certificate must chain to (unset: system CAs)."
    )
    username: str | None = Field(default=None, description="SMTP login (unset: no AUTH).")
    password_env: str | None = Field(default=None, description="Environment variable with the password.")
    sender: str = Field(description="From: address.")
    recipients: list[str] = Field(description="To: addresses.")
    timeout_s: float = Field(default=20, gt=0, le=300, description="Seconds to wait for the server.")

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if "@" not in value or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one recipient is required")
        for item in value:
            cls._sender(item)
        return value

    @field_validator("password_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        return None if value is None else check_env_name(value)

    @model_validator(mode="after")
    def _login(self) -> EmailConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        return self


class NotificationsConfig(BaseModel):
    """When to notify, whom, and how often at most."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Webhook receivers.")
    email: EmailConfig | None = Field(default=None, description="E-mail by SMTP (unset: no e-mail).")
    events: list[NotificationKind] = Field(
        default_factory=lambda: list(NotificationKind),
        description="Which incidents are notified: job_failed, destination_unreachable, spool_low.",
    )
    destination_down_minutes: float = Field(
        default=15, gt=0, description="A destination unreachable for longer than this is notified."
    )
    check_interval_s: float = Field(
        default=30, gt=0, description="Seconds between two looks for new incidents."
    )
    max_per_hour: int = Field(
        default=30,
        ge=1,
        description="Notifications per channel per hour at most; beyond it they are recorded in the audit "
        "log as suppressed, not sent.",
    )
    retry_initial_delay_s: float = Field(
        default=30, gt=0, description="Wait before the first retry when a receiver is down."
    )
    retry_max_delay_s: float = Field(default=900, gt=0, description="Longest wait between two retries.")
    retry_max_hours: float = Field(
        default=24, gt=0, description="Hours after which an undeliverable notification is given up."
    )
    include_uids: bool = Field(
        default=False,
        description="Also send the Study and Series Instance UIDs in clear (default: only a hash of the "
        "Series Instance UID). Patient name and ID are never sent.",
    )
    dashboard_url: str | None = Field(
        default=None,
        description="Address of the dashboard as the recipients reach it; a link to the job is added.",
    )

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[NotificationKind]) -> list[NotificationKind]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _delays(self) -> NotificationsConfig:
        if self.retry_max_delay_s < self.retry_initial_delay_s:
            raise ValueError("retry_max_delay_s must not be shorter than retry_initial_delay_s")
        names = [w.name for w in self.webhooks]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"webhook name(s) listed twice: {', '.join(doubled)}")
        return self
