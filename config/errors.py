"""The root of SegNode's exception hierarchy.

Every error SegNode raises on purpose derives from :class:`SegNodeError`. Errors that reach the network
carry a DICOM status (see ``dicom_node.receiving.statuses``); errors of a job carry the stage and a
stable reason code.
"""

from __future__ import annotations


class SegNodeError(Exception):
    """Base class of every error SegNode raises on purpose."""

    #: Stable, machine-readable reason code shown in the audit log and the CLI.
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(SegNodeError):
    """The configuration is invalid; ``problems`` lists every problem as ``file: key.path: reason``."""

    reason = "invalid_configuration"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
