"""Durable file writes shared by the spool, the job work folders and the outbox.

A file is written under a temporary name in its target folder, fsync'd, renamed into place with
``os.replace`` and the folder fsync'd, so that after a crash it is either complete or absent. A full disk
(ENOSPC, EDQUOT) is reported as :class:`DiskFullError` with the reason ``out_of_resources`` that the node
uses to retry jobs when space returns (``dicom_node.jobs.retention.resume_after_space_freed``).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from config.errors import SegNodeError

#: Failure reason of a write or a stage that found no room on disk.
OUT_OF_RESOURCES = "out_of_resources"


class DiskFullError(SegNodeError):
    """The file system filled up while writing; nothing partial was left."""

    reason = OUT_OF_RESOURCES


def is_disk_full(exc: OSError) -> bool:
    """Whether an ``OSError`` says the file system (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(file object)`` to a temporary name, fsync, then rename into place.

    Parameters
    ----------
    target: pathlib.Path
        The file to write; its folder is created when missing.
    write: Callable[[IO[bytes]], None]
        Writes the content to the binary file object it is given.

    Returns
    -------
    pathlib.Path
        ``target``.

    Raises
    ------
    DiskFullError
        The disk filled up (ENOSPC, EDQUOT); nothing partial is left.
    OSError
        Any other I/O failure (the temporary file is removed).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFullError(
                f"disk full while writing {target.name}: free space on its file system"
            ) from exc
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def _save_npy(array: npt.NDArray[Any], fh: IO[bytes]) -> None:
    np.save(fh, array, allow_pickle=False)


def _save_dicom(dataset: Dataset, fh: IO[bytes]) -> None:
    dataset.save_as(fh, enforce_file_format=True)


def write_npy(array: npt.NDArray[Any], path: Path) -> Path:
    """Write an array as ``.npy`` (no pickles) atomically (see :func:`atomic_write`)."""
    return atomic_write(path, partial(_save_npy, array))


def write_dicom(
    dataset: Dataset, path: Path, writer: Callable[[Dataset, IO[bytes]], None] | None = None
) -> Path:
    """Write a dataset as a DICOM file with file meta information, atomically (see :func:`atomic_write`);
    ``writer``: how to encode it (default ``save_as`` with ``enforce_file_format``), e.g. the overlay
    series' writer of the elements its images share."""
    return atomic_write(path, partial(writer or _save_dicom, dataset))
