"""Peak resident memory of a process and its descendants, sampled from /proc (Linux; benchmarks only)."""

from __future__ import annotations

import threading
from pathlib import Path

PAGE_KB = 4


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants now (0 for processes already gone)."""
    total = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * PAGE_KB * 1024
        stack += _children(current)
    return total


class TreeRssSampler:
    """Samples :func:`tree_rss_bytes` of ``pid`` every ``interval`` s in a thread; :attr:`peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.peak = tree_rss_bytes(self.pid)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
