"""The spool: durable storage of received instances as ``<root>/<Study>/<Series>/<SOP Instance>.dcm``.

A store writes the bytes to a temporary file in ``<root>/.incoming``, fsyncs it, renames it into place with
``os.replace`` (atomic on one file system) and fsyncs the folder, so a file in the tree is always complete.
Left-over temporary files (a crash mid-write) are removed by :meth:`Spool.prepare` at start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.errors import SegNodeError
from dicom_node.durable import OUT_OF_RESOURCES, fsync_dir, is_disk_full
from dicom_node.receiving.admission import PRIVATE_DIR_MODE, private_dir
from dicom_node.uids import path_safe_uid

LOG = logging.getLogger(__name__)

#: Returns the free bytes of the file system holding a path (injectable for tests).
FreeSpaceProbe = Callable[[Path], int]
TEMP_DIR = ".incoming"
TEMP_SUFFIX = ".part"
#: Complete files found in the spool without an audit row (see :meth:`Spool.quarantine_unrecorded`).
UNACKNOWLEDGED_DIR = ".unacknowledged"


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class SpoolFullError(SegNodeError):
    """Free space is below the watermark, or the disk filled up while writing (DICOM 0xA700)."""

    reason = OUT_OF_RESOURCES


class SpoolWriteError(SegNodeError):
    """Any other I/O failure while storing an instance."""

    reason = "spool_write_failed"


@dataclass(frozen=True, slots=True)
class StoredFile:
    relative_path: str
    size: int
    sha256: str


class Spool:
    def __init__(self, root: Path, min_free_bytes: int, probe: FreeSpaceProbe = disk_free_bytes) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.probe = probe
        self.temp_dir = self.root / TEMP_DIR

    def prepare(self) -> int:
        """Create the spool (folders ``0700``) and remove temporary files a crash left behind; returns how
        many."""
        private_dir(self.root)
        private_dir(self.temp_dir)
        removed = 0
        for leftover in [*self.temp_dir.iterdir(), *self.root.rglob(f"*{TEMP_SUFFIX}")]:
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
        if removed:
            LOG.warning("removed %d incomplete temporary file(s) from the spool", removed)
        return removed

    def quarantine_unrecorded(self, recorded: set[str]) -> list[str]:
        """Move instance files that have no audit row into ``<root>/.unacknowledged/`` (same relative path);
        returns their relative paths.

        Such a file is complete (it was renamed into place after fsync) but the node stopped before the
        audit row was committed, so the sender never got Success and will send the instance again. Moving
        it aside keeps the bytes for inspection without letting an unacknowledged file into a job.
        """
        moved: list[str] = []
        for path in sorted(self.root.glob("*/*/*.dcm")):
            relative = path.relative_to(self.root)
            if relative.parts[0].startswith(".") or relative.as_posix() in recorded:
                continue
            target = self.root / UNACKNOWLEDGED_DIR / relative
            self._make_dirs(target.parent)
            os.replace(path, target)
            fsync_dir(path.parent)
            moved.append(relative.as_posix())
        if moved:
            LOG.warning(
                "moved %d spool file(s) without an audit row to %s",
                len(moved),
                self.root / UNACKNOWLEDGED_DIR,
            )
        return moved

    def below_watermark(self, incoming: int = 0) -> bool:
        return self.probe(self.root) - incoming < self.min_free_bytes

    def path_for(self, study: str, series: str, sop_instance: str) -> Path:
        """Relative path of an instance; every UID is validated before it becomes a path component."""
        return Path(
            path_safe_uid(study, "Study Instance UID"),
            path_safe_uid(series, "Series Instance UID"),
            path_safe_uid(sop_instance, "SOP Instance UID") + ".dcm",
        )

    def _make_dirs(self, folder: Path) -> None:
        missing: list[Path] = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=PRIVATE_DIR_MODE)  # files inside are 0600 (mkstemp)
            except FileExistsError:
                continue  # another association created it a moment ago
            fsync_dir(path.parent)

    def store(self, data: bytes, relative: Path) -> StoredFile:
        """Durably write ``data`` at ``relative`` under the root; the file appears complete or not at all."""
        if self.below_watermark(len(data)):
            raise SpoolFullError(
                f"free space below the watermark of {self.min_free_bytes} bytes; instance not stored"
            )
        digest = hashlib.sha256(data).hexdigest()
        fd, temp_name = tempfile.mkstemp(dir=self.temp_dir, suffix=TEMP_SUFFIX)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            target = self.root / relative
            self._make_dirs(target.parent)
            os.replace(temp_name, target)
            fsync_dir(target.parent)
        except OSError as exc:
            Path(temp_name).unlink(missing_ok=True)
            if is_disk_full(exc):
                raise SpoolFullError(f"disk full while writing {relative}") from exc
            raise SpoolWriteError(f"cannot write {relative}: {exc.strerror}") from exc
        return StoredFile(str(relative), len(data), digest)
