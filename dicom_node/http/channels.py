"""Where notifications go: a webhook (JSON POST) or an SMTP server (STARTTLS before anything is sent).

Each channel is a callable that sends one notification or raises :class:`NotificationError` with a short
reason; the notifier retries it later.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import Any

from config.errors import SegNodeError
from config.notifications import EmailConfig, WebhookConfig

#: Sends one notification: (subject, JSON payload, plain-text body).
Channel = Callable[[str, Mapping[str, Any], str], None]


class NotificationError(SegNodeError):
    """A notification could not be delivered this time."""

    reason = "notification_failed"


def _tls_context(ca_certificates: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_certificates) if ca_certificates else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def webhook_channel(config: WebhookConfig, environ: Mapping[str, str] | None = None) -> Channel:
    """POST the payload as JSON to the webhook's URL; any 2xx answer counts as delivered."""
    env = os.environ if environ is None else environ
    token = env.get(config.token_env, "") if config.token_env else ""

    def send(subject: str, payload: Mapping[str, Any], body: str) -> None:
        data = json.dumps(payload, sort_keys=True).encode("utf-8")
        request = urllib.request.Request(config.url, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "SegNode notifications")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        context = _tls_context(config.ca_certificates) if config.url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s, context=context) as answer:
                status = int(answer.status)
        except urllib.error.HTTPError as exc:
            raise NotificationError(f"webhook {config.name}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotificationError(f"webhook {config.name}: {reason}") from exc
        if not 200 <= status < 300:
            raise NotificationError(f"webhook {config.name}: HTTP {status}")

    return send


def email_channel(config: EmailConfig, environ: Mapping[str, str] | None = None) -> Channel:
    """Send a plain-text mail; with ``starttls`` the connection is encrypted (server certificate verified)
    before the login and the message, and a server that does not offer STARTTLS gets nothing."""
    env = os.environ if environ is None else environ
    password = env.get(config.password_env, "") if config.password_env else ""

    def send(subject: str, payload: Mapping[str, Any], body: str) -> None:
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = config.sender
        message["To"] = ", ".join(config.recipients)
        message.set_content(body)
        where = f"SMTP {config.host}:{config.port}"
        try:
            with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
                smtp.ehlo()
                if config.starttls:
                    if not smtp.has_extn("starttls"):
                        raise NotificationError(f"{where} does not offer STARTTLS; nothing was sent")
                    smtp.starttls(context=_tls_context(config.ca_certificates))
                    smtp.ehlo()
                if config.username:
                    smtp.login(config.username, password)
                smtp.send_message(message)
        except NotificationError:
            raise
        except (smtplib.SMTPException, OSError) as exc:
            raise NotificationError(f"{where}: {type(exc).__name__}: {exc}") from exc

    return send
