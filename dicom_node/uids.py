"""Validation of UIDs before they become parts of a file path."""

from __future__ import annotations

import re

from config.errors import SegNodeError

_UI_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")
MAX_UI_LENGTH = 64


class InvalidUIDError(SegNodeError):
    """A UID from the network is not a usable DICOM UI value."""

    reason = "invalid_uid"


def path_safe_uid(value: object, what: str) -> str:
    """Return ``value`` as a UID safe to use as a file or folder name, or raise :class:`InvalidUIDError`.

    Accepts what PS3.5 allows (digits and dots, at most 64 characters, trailing NUL/space padding removed)
    and, tolerantly, components with leading zeros that real scanners send (``1.2.840.0113...``). Anything
    else (separators, ``..``, letters, empty components, over-long values) is refused: the value never
    reaches the file system.
    """
    if not isinstance(value, str):
        raise InvalidUIDError(f"{what} is missing or not text")
    uid = value.rstrip("\x00 ").lstrip(" ")
    if not uid:
        raise InvalidUIDError(f"{what} is empty")
    if len(uid) > MAX_UI_LENGTH:
        raise InvalidUIDError(f"{what} is longer than {MAX_UI_LENGTH} characters")
    if not _UI_RE.fullmatch(uid):  # fullmatch: "$" would accept a trailing newline
        raise InvalidUIDError(f"{what} {uid[:80]!r} is not a DICOM UID (digits separated by single dots)")
    return uid
