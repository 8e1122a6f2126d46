"""DCMTK (Debian package ``dcmtk``): its command-line tools, and ``storescp`` as a real peer."""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.dicom import Answer, wait_for_association_answer
from tests.support.ports import free_port


@functools.cache
def dcmtk(name: str) -> str:
    """Path of a DCMTK tool, not a same-named Python console script (pynetdicom installs ``storescp``,
    ``echoscu``, ... earlier on PATH)."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
            if "dcmtk" in version.stdout.lower():
                return candidate
    pytest.fail(f"DCMTK's {name} is not installed (apt-get install dcmtk)")


@dataclass(frozen=True)
class StoreSCP:
    """A running ``storescp``: where it listens and where it writes what it receives."""

    port: int
    ae_title: str
    folder: Path
    #: How it answered the association request it was awaited with (REJECTED under ``--refuse``).
    answer: Answer


@contextlib.contextmanager
def storescp(
    folder: Path, *options: str, ae_title: str = "STORESCP", port: int | None = None
) -> Iterator[StoreSCP]:
    """DCMTK's ``storescp`` on 127.0.0.1 (``port``, or a free one) writing into ``folder``, with extra
    command-line ``options`` (e.g. ``--bit-preserving``, ``+xa``, ``--refuse``). It is yielded once it has
    answered an association request (accepted with C-ECHO, or rejected under ``--refuse``), and stopped on
    leaving. Its own messages go to ``<folder>.storescp.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = folder.with_name(f"{folder.name}.storescp.log")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [dcmtk("storescp"), "-aet", ae_title, "-od", str(folder), *options, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        answer = wait_for_association_answer(
            port,
            ae_title,
            "storescp",
            process=process,
            details=lambda: log_path.read_text(errors="replace")[-2000:],
        )
        yield StoreSCP(port, ae_title, folder, answer)
    finally:
        process.terminate()
        process.wait(timeout=30)
