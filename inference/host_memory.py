"""Host memory of the inference process: large freed blocks kept and reused instead of mapped afresh.

A full-size network on the CPU allocates and frees about 3 GB of activations per tile (feature maps of
32 channels at 112x160x128 voxels are 293 MB each). glibc serves every block over its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` when torch frees it, so every tile
touches 3 GB of new pages: about 770,000 page faults, each page zero-filled by the kernel, measured at
20 % of the tile's CPU time plus colder caches. With :func:`reuse_freed_memory` the process keeps one
malloc arena and no per-block mappings: a freed feature map goes back to the heap and the next tile
takes the same pages, with no fault (``inference.cpu_memory: reuse``).

The settings are process-wide ``mallopt`` calls of glibc and must come before the threads that run
inference exist: a thread that has already allocated keeps its own arena, and an arena other than the
main one still maps its large blocks. The entry points (``segnode serve``, ``worker``, ``segment``)
call :func:`configure_host_memory` first thing. After each series the engine calls
:func:`release_freed_memory` (``malloc_trim``), so an idle node does not hold the peak of its last
series; the next series faults its pages in once, on its first tile.

Not glibc (musl, macOS): nothing is changed and the node runs with the system allocator's behaviour.

``hugepages`` is the middle way: glibc's defaults, but torch's tensors of 2 MB and more on transparent
huge pages, so each tile faults its memory in 2 MB at a time (:func:`use_huge_pages`); the resident size
stays that of the live tensors.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

CpuMemory = Literal["hugepages", "reuse", "system"]

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: The largest trim threshold ``mallopt`` takes (an ``int``): free memory at the top of the heap is
#: returned by :func:`release_freed_memory`, not as a side effect of each ``free``.
TRIM_THRESHOLD = 2**31 - 1

#: torch's switch for transparent huge pages under its CPU tensors (read at its first CPU allocation).
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_state: dict[str, bool] = {"reusing": False}
_lock = threading.Lock()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else ``None``."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    logger.debug("C library: glibc %s", version().decode())
    return libc


def reuse_freed_memory() -> bool:
    """One malloc arena, no mmap per block, no trim on ``free``; ``False`` where libc is not glibc."""
    with _lock:
        if _state["reusing"]:
            return True
        libc = _glibc()
        if libc is None:
            logger.info("host memory: not glibc, the system allocator's behaviour is kept")
            return False
        settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        for parameter, value in settings:
            if libc.mallopt(parameter, value) != 1:
                logger.warning("host memory: mallopt(%d, %d) refused; system default kept", parameter, value)
                return False
        _state["reusing"] = True
        logger.info("host memory: freed blocks are reused (one arena, no per-block mmap)")
        return True


def release_freed_memory() -> None:
    """The heap's free pages back to the system (``malloc_trim``), when :func:`reuse_freed_memory` holds."""
    if not _state["reusing"]:
        return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def configure_host_memory(setting: CpuMemory) -> bool:
    """Apply ``inference.cpu_memory`` to this process (before starting threads); ``True`` when reusing."""
    if setting == "hugepages":
        use_huge_pages()
        return False
    if setting == "system":
        return False
    return reuse_freed_memory()


def use_huge_pages() -> bool:
    """torch's CPU tensors of 2 MB and more on transparent huge pages (``THP_MEM_ALLOC_ENABLE``).

    A freed feature map still goes back to the system, so the resident size stays that of the live
    tensors, but a new one faults in 2 MB at a time: about 9,000 faults per full-size tile instead of
    770,000. torch reads the variable at its first CPU allocation, so this must run before any tensor
    exists; the kernel must allow it (``/sys/kernel/mm/transparent_hugepage/enabled``: ``always`` or
    ``madvise``). Returns whether both hold (checked with a 4 MB tensor and the process's huge pages).
    """
    os.environ.setdefault(THP_VARIABLE, "1")
    try:
        mode = THP_ENABLED.read_text()
    except OSError:
        mode = ""
    if "[never]" in mode or not mode:
        logger.info("host memory: transparent huge pages are off in this kernel (%s)", THP_ENABLED)
        return False
    import torch

    before = _huge_kb()
    probe = torch.ones(1024 * 1024)  # 4 MB, touched
    taken = _huge_kb() - before >= 2048
    del probe
    if taken:
        logger.info("host memory: tensors of 2 MB and more on transparent huge pages")
    else:
        logger.warning(
            "host memory: huge pages not taken (a tensor existed before %s was set, or the kernel refused)",
            THP_VARIABLE,
        )
    return taken


def _huge_kb() -> int:
    """The process's anonymous memory on huge pages, in kB (``/proc/self/smaps_rollup``)."""
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reusing() -> bool:
    """Whether this process reuses freed blocks (:func:`reuse_freed_memory` took effect)."""
    return _state["reusing"]
