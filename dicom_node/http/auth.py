"""Who may use the HTTP service: users (HTTP basic or the dashboard's login) and bearer tokens.

Secrets come from the environment variables the configuration names, read once when the service starts.
Passwords and tokens are compared in constant time. The dashboard keeps a login in a signed cookie
(HMAC-SHA256 with a key made at start, so a restart logs everyone out) that also carries the CSRF token
its forms must send back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from config.http import HttpConfig, HttpRole

LOG = logging.getLogger(__name__)

#: Name of the dashboard's login cookie.
SESSION_COOKIE = "segnode_session"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user or a token, with its role."""

    name: str
    role: HttpRole
    #: user | token
    kind: str

    @property
    def is_admin(self) -> bool:
        return self.role is HttpRole.admin


@dataclass(frozen=True)
class AuthFailure:
    """Why a request was refused: missing_credentials, wrong_credentials, unsupported_scheme."""

    reason: str
    #: The user name that was tried (never the password or the token).
    tried: str | None = None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Credentials:
    """The users and tokens of the configuration with their secrets from the environment."""

    def __init__(self, config: HttpConfig, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._users: dict[str, tuple[bytes, HttpRole]] = {}
        self._tokens: list[tuple[bytes, Principal]] = []
        #: Entries that cannot log in because their variable is unset or empty: (name, variable).
        self.unusable: list[tuple[str, str]] = []
        for user in config.users:
            secret = env.get(user.password_env, "")
            if secret:
                self._users[user.name] = (_digest(secret), user.role)
            else:
                self.unusable.append((user.name, user.password_env))
        for token in config.tokens:
            secret = env.get(token.token_env, "")
            if secret:
                self._tokens.append((_digest(secret), Principal(token.name, token.role, "token")))
            else:
                self.unusable.append((token.name, token.token_env))
        for name, variable in self.unusable:
            LOG.warning("HTTP login %r is disabled: environment variable %s is not set", name, variable)

    @property
    def any(self) -> bool:
        return bool(self._users or self._tokens)

    def check_password(self, name: str, password: str) -> Principal | None:
        entry = self._users.get(name)
        # compare against a dummy digest for unknown names, so that timing does not tell names apart
        expected, role = entry if entry is not None else (_digest(secrets.token_hex(16)), HttpRole.read_only)
        ok = hmac.compare_digest(expected, _digest(password))
        return Principal(name, role, "user") if ok and entry is not None else None

    def check_token(self, token: str) -> Principal | None:
        digest = _digest(token)
        found = None
        for expected, principal in self._tokens:
            if hmac.compare_digest(expected, digest):
                found = principal
        return found

    def user(self, name: str) -> Principal | None:
        entry = self._users.get(name)
        return None if entry is None else Principal(name, entry[1], "user")

    def authenticate(self, authorization: str | None) -> Principal | AuthFailure:
        """Check an ``Authorization`` header (``Basic`` or ``Bearer``)."""
        if not authorization or not authorization.strip():
            return AuthFailure("missing_credentials")
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            principal = self.check_token(value)
            return principal if principal is not None else AuthFailure("wrong_credentials")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return AuthFailure("wrong_credentials")
            name, sep, password = decoded.partition(":")
            if not sep:
                return AuthFailure("wrong_credentials")
            principal = self.check_password(name, password)
            return principal if principal is not None else AuthFailure("wrong_credentials", name[:64])
        return AuthFailure("unsupported_scheme")


@dataclass(frozen=True)
class Session:
    """A dashboard login: who, until when, and the CSRF token of its forms."""

    principal: Principal
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and checks the dashboard's signed session cookies."""

    def __init__(self, credentials: Credentials, ttl_s: float, key: bytes | None = None) -> None:
        self.credentials = credentials
        self.ttl_s = ttl_s
        self._key = key or secrets.token_bytes(32)

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def sign_text(self, text: str) -> str:
        """A MAC of a short text (a message in a link that must not be forged)."""
        data = b"text:" + text.encode("utf-8")
        return _b64(hmac.new(self._key, data, hashlib.sha256).digest())[:32]

    def issue(self, principal: Principal) -> tuple[str, Session]:
        session = Session(principal, time.time() + self.ttl_s, secrets.token_urlsafe(24))
        body = {"u": principal.name, "e": session.expires, "c": session.csrf}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}", session

    def verify(self, cookie: str | None) -> Session | None:
        """The session of a cookie, or ``None`` (absent, forged, expired, or the user no longer exists)."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(self._mac(payload), mac):
            return None
        try:
            body = json.loads(_unb64(payload))
            name, expires, csrf = str(body["u"]), float(body["e"]), str(body["c"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        principal = self.credentials.user(name)  # the role in force now, not the one at login
        if principal is None or expires < time.time():
            return None
        return Session(principal, expires, csrf)


class RefusalLog:
    """Caps how many refused requests are written to the audit log (a flood must not fill the disk):
    at most ``per_minute`` rows a minute; the rest are counted and the count is written with the next."""

    def __init__(self, per_minute: int = 60) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._window = 0
        self._written = 0
        self._skipped = 0

    def admit(self) -> tuple[bool, int]:
        """(write this one?, refusals not written since the last row written)."""
        minute = int(time.monotonic() // 60)
        with self._lock:
            if minute != self._window:
                self._window, self._written = minute, 0
            if self._written >= self.per_minute:
                self._skipped += 1
                return False, 0
            self._written += 1
            skipped, self._skipped = self._skipped, 0
            return True, skipped
