"""Waiting for a condition instead of sleeping: poll a predicate until it gives a truthy value.

The timeout is a safety net for a broken run, never part of a passing one: a passing test returns as soon
as the condition holds. Pick it generously (a loaded 2-core machine is slow) and say what is awaited.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The first poll interval; it doubles up to ``interval_s`` so that quick conditions return quickly and long
#: waits do not load the machine.
_FIRST_INTERVAL_S = 0.005


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 30.0,
    what: str = "condition",
    *,
    interval_s: float = 0.1,
    process: subprocess.Popen[bytes] | None = None,
    details: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises :class:`AssertionError` naming ``what`` when ``timeout_s`` passes first, or at once when
    ``process`` (the peer being awaited) has exited; ``details()`` (e.g. the tail of a log) is appended to
    either message. Exceptions of the predicate propagate.
    """
    deadline = time.monotonic() + timeout_s
    pause = min(_FIRST_INTERVAL_S, interval_s)
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(_message(f"{what}: the process exited with {process.returncode}", details))
        if time.monotonic() > deadline:
            raise AssertionError(_message(f"timed out after {timeout_s:g} s waiting for {what}", details))
        time.sleep(pause)
        pause = min(pause * 2, interval_s)


def _message(text: str, details: Callable[[], str] | None) -> str:
    return f"{text}\n{details()}" if details is not None else text
