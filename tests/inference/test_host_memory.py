"""inference.cpu_memory: freed host memory reused by the next tile (no page faults), released per series.

The behaviour is process-wide (glibc's ``mallopt``), so each check runs in a fresh Python process and
counts what the kernel reports: minor page faults while a 256 MB tensor is allocated and filled after a
slightly larger one was freed, and the resident size before and after the release. No timing decides
anything.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from config.inference import InferenceConfig
from inference import host_memory
from tests.support.paths import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux only")

#: Runs in a fresh process: applies a setting, then (in a thread started afterwards, as the node's job
#: workers are) frees a 260 MB tensor and allocates and fills one of 256 MB; prints faults and resident sizes.
PROBE = textwrap.dedent(
    """
    import json, resource, sys, threading
    sys.path.insert(0, {root!r})
    from inference.host_memory import configure_host_memory, release_freed_memory
    reusing = configure_host_memory({setting!r})
    import torch

    def rss():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

    out = {{"reusing": reusing}}

    def body():
        a = torch.ones(65 * 1024 * 1024)  # 260 MB, touched (a little larger: posix_memalign's padding)
        del a
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        b = torch.empty(64 * 1024 * 1024)
        b.fill_(2.0)
        out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del b
        out["rss_freed"] = rss()
        release_freed_memory()
        out["rss_released"] = rss()

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    print(json.dumps(out))
    """
)

PAGES_256MB = 256 * 1024 * 1024 // 4096


def probe(setting: str) -> dict[str, Any]:
    code = PROBE.format(root=str(ROOT), setting=setting)
    # a clean environment: torch's huge-page switch only when the setting sets it
    env = {k: v for k, v in os.environ.items() if k != host_memory.THP_VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_reuse_takes_the_freed_block_again_without_page_faults() -> None:
    result = probe("reuse")
    assert result["reusing"] is True
    # The second 256 MB tensor lands on the pages of the first: (almost) no fault, against one per page.
    assert result["faults"] < PAGES_256MB // 20, result
    # Freed, the block stays resident until the release, which gives it back to the system.
    assert result["rss_freed"] - result["rss_released"] > 200 * 1024 * 1024, result


THP_MODE = host_memory.THP_ENABLED.read_text() if host_memory.THP_ENABLED.exists() else "[never]"
HUGE_PAGES_OFF = "[never]" in THP_MODE
#: torch reads its huge-page switch at its first allocation: set in this process's environment from the start?
SWITCH_AT_START = host_memory.THP_VARIABLE in os.environ


@pytest.mark.skipif(HUGE_PAGES_OFF, reason="transparent huge pages are off in this kernel")
def test_hugepages_fault_in_2_mb_at_a_time_and_keep_nothing() -> None:
    result = probe("hugepages")
    assert result["reusing"] is False
    # 256 MB of a new tensor: ~128 faults of 2 MB (a few more at the edges), not 65,536 of 4 kB
    assert result["faults"] < PAGES_256MB // 20, result
    # freed tensors go back to the system as with glibc's defaults: nothing left for the release
    assert abs(result["rss_freed"] - result["rss_released"]) < 64 * 1024 * 1024, result


def test_hugepages_are_reported_when_the_kernel_has_them_off(
    fresh_state: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    switch = tmp_path / "enabled"
    switch.write_text("always madvise [never]\n")
    monkeypatch.setattr(host_memory, "THP_ENABLED", switch)
    monkeypatch.setenv(host_memory.THP_VARIABLE, "0")
    monkeypatch.delenv(host_memory.THP_VARIABLE)  # absent, and absent again after the test
    with caplog.at_level(logging.INFO, logger="inference.host_memory"):
        assert host_memory.use_huge_pages() is False
    assert "transparent huge pages are off" in caplog.text


@pytest.mark.skipif(
    "[madvise]" not in THP_MODE or SWITCH_AT_START,
    reason="needs the kernel's madvise mode (with always, any large block may land on huge pages) and a "
    "test process started without torch's switch",
)
def test_hugepages_too_late_in_a_process_says_so(
    fresh_state: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In this (pytest) process torch has long allocated: the switch is read already, and it is said."""
    monkeypatch.setenv(host_memory.THP_VARIABLE, "0")
    monkeypatch.delenv(host_memory.THP_VARIABLE)  # absent, and absent again after the test
    import torch

    torch.ones(8)  # torch has allocated before the variable is set
    with caplog.at_level(logging.WARNING, logger="inference.host_memory"):
        assert host_memory.use_huge_pages() is False
    assert "huge pages not taken" in caplog.text


def test_system_setting_keeps_glibcs_behaviour() -> None:
    result = probe("system")
    assert result["reusing"] is False
    # glibc maps the block afresh: every page of the new tensor faults in (zero-filled by the kernel).
    assert result["faults"] >= PAGES_256MB * 9 // 10, result
    # ... and already gave the freed block back on free (nothing left for the release to do).
    assert abs(result["rss_freed"] - result["rss_released"]) < 64 * 1024 * 1024, result


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's view of the setting, isolated (nothing here calls the real ``mallopt``)."""
    monkeypatch.setattr(host_memory, "_state", {"reusing": False})
    host_memory._glibc.cache_clear()


class _Libc:
    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int]] = []
        self.trims = 0

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.answer

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1


def test_not_glibc_keeps_the_system_allocator(
    fresh_state: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    with caplog.at_level(logging.INFO, logger="inference.host_memory"):
        assert host_memory.configure_host_memory("reuse") is False
    assert "not glibc" in caplog.text
    assert host_memory.reusing() is False
    host_memory.release_freed_memory()  # nothing to release, no error


def test_a_refused_mallopt_is_reported_and_nothing_claimed(
    fresh_state: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    libc = _Libc(answer=0)
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    with caplog.at_level(logging.WARNING, logger="inference.host_memory"):
        assert host_memory.reuse_freed_memory() is False
    assert "refused" in caplog.text
    assert host_memory.reusing() is False
    host_memory.release_freed_memory()
    assert libc.trims == 0


def test_settings_applied_once_and_release_trims(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc(answer=1)
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    assert host_memory.configure_host_memory("reuse") is True
    assert host_memory.configure_host_memory("reuse") is True
    expected = [
        (host_memory.M_ARENA_MAX, 1),
        (host_memory.M_MMAP_MAX, 0),
        (host_memory.M_TRIM_THRESHOLD, host_memory.TRIM_THRESHOLD),
    ]
    assert libc.calls == expected
    host_memory.release_freed_memory()
    assert libc.trims == 1


def test_config_default_and_validation() -> None:
    assert InferenceConfig().cpu_memory == "hugepages"
    assert InferenceConfig(cpu_memory="system").cpu_memory == "system"
    with pytest.raises(ValidationError, match="cpu_memory"):
        InferenceConfig(cpu_memory="jemalloc")  # type: ignore[arg-type]
