"""Byte damage for fuzz tests: the same edits (overwrite, insert, delete, truncate) wherever encoded DICOM
bytes are fuzzed (the C-STORE path, the byte walker)."""

from __future__ import annotations

from collections.abc import Sequence

#: What an edit does at its place: write over, insert, delete as many bytes as the chunk has, or cut there.
EDIT_KINDS = ("overwrite", "insert", "delete", "truncate")


def mutate_bytes(data: bytes, edits: Sequence[tuple[float, str, bytes]], start: int = 0) -> bytes:
    """Apply ``edits`` (where as a fraction of the bytes after ``start``, kind, chunk) one after the other."""
    for where, how, chunk in edits:
        at = start + int(where * (len(data) - start))
        if how == "overwrite":
            data = data[:at] + chunk + data[at + len(chunk) :]
        elif how == "insert":
            data = data[:at] + chunk + data[at:]
        elif how == "delete":
            data = data[:at] + data[at + len(chunk) :]
        elif how == "truncate":
            data = data[:at]
        else:
            raise ValueError(f"unknown edit {how!r}; use one of {', '.join(EDIT_KINDS)}")
    return data
