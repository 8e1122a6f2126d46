"""Getting weights into the weights folder: downloads (with a progress bar) and imports of zips or folders.

A download goes to a temporary file inside the weights folder, is checked (length, zip CRCs, sha256 when
known, layout) and extracted into a temporary folder that is then moved into place with ``os.replace``, so
that a model folder is either complete or absent. The layout, the download locations and what SegNode
sends where are described in :mod:`inference.weights`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from email.message import Message
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol, Self, TextIO

from inference import registry
from inference.registry import PartModel

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass

from inference.weights import (
    TEMP_PREFIX,
    DownloadError,
    DownloadLocations,
    InvalidWeightsError,
    LicenseError,
    WeightSource,
    model_problems,
    weight_sources,
)

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16


# -------------------------------------------------------------------------------------------- progress


class Progress:
    """A plain-text progress bar: redrawn in place on a terminal, one line per 10 % otherwise."""

    def __init__(self, stream: TextIO | None, label: str, total: int | None) -> None:
        self.stream, self.label, self.total = stream, label, total if total else None
        self.done = 0
        self._tty = bool(stream is not None and stream.isatty())
        self._last_draw = 0.0
        self._last_decile = -1

    def _line(self) -> str:
        mb = self.done / 1e6
        if self.total is None:
            return f"{self.label}: {mb:.1f} MB"
        pct = 100 * self.done // self.total
        bar = "#" * (pct // 4)
        return f"{self.label}: [{bar:<25}] {pct:3d}% {mb:.1f}/{self.total / 1e6:.1f} MB"

    def update(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.2:
                self._last_draw = now
                self.stream.write("\r" + self._line())
                self.stream.flush()
        elif self.total is not None:
            decile = 10 * self.done // self.total
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def finish(self) -> None:
        if self.stream is None:
            return
        if self._tty:
            self.stream.write("\r" + self._line() + "\n")
        elif self.total is None or self._last_decile < 10:
            self.stream.write(self._line() + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------------------- downloading


def _license_refusal(body: bytes) -> str | None:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(document, dict) and document.get("status") not in (None, "ok", "success"):
        return str(document.get("status"))
    return None


class _Response(Protocol):
    """What :func:`fetch` uses of ``urlopen``'s answer (typeshed types ``urlopen`` as returning ``Any``)."""

    @property
    def headers(self) -> Message: ...

    def read(self, amt: int, /) -> bytes: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...


def _open(request: urllib.request.Request, timeout: float, licensed: bool) -> _Response:
    url = request.full_url
    try:
        response: _Response = urllib.request.urlopen(request, timeout=timeout)
        return response
    except urllib.error.HTTPError as exc:
        body = exc.read(4096) if exc.fp is not None else b""
        refusal = _license_refusal(body) if licensed else None
        if refusal is not None:
            raise LicenseError(
                f"the licence server {url} refused the licence number: {refusal}", reason="invalid_license"
            ) from None
        raise DownloadError(f"download from {url} failed: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DownloadError(
            f"cannot reach {url} ({exc.reason}); this node looks offline. Download the zip on a machine with "
            "internet access and install it with `segnode models import FILE`.",
            reason="offline",
        ) from None
    except (TimeoutError, ConnectionError) as exc:
        raise DownloadError(f"cannot reach {url}: {exc}", reason="offline") from None


def fetch(
    request: urllib.request.Request,
    dest: IO[bytes],
    *,
    label: str,
    progress: TextIO | None,
    timeout: float,
    licensed: bool = False,
) -> tuple[int, str]:
    """Stream ``request``'s response body into ``dest``; returns (bytes written, sha256 hex digest)."""
    url = request.full_url
    digest = hashlib.sha256()
    written = 0
    with _open(request, timeout, licensed) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        content_type = str(response.headers.get("Content-Type", ""))
        if licensed and content_type.startswith("application/json"):
            body = response.read(4096)
            refusal = _license_refusal(body) or "no weights in the answer"
            raise LicenseError(
                f"the licence server {url} refused the download: {refusal}", reason="invalid_license"
            )
        bar = Progress(progress, label, total)
        try:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                dest.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        except (OSError, TimeoutError) as exc:
            raise DownloadError(f"download from {url} broke off after {written} bytes: {exc}") from None
        finally:
            bar.finish()
    if total is not None and written != total:
        raise DownloadError(f"download from {url} is truncated: got {written} of {total} bytes")
    return written, digest.hexdigest()


@contextmanager
def _temp_file(folder: Path, suffix: str) -> Iterator[tuple[IO[bytes], Path]]:
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX + "download-", suffix=suffix, dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, path
    finally:
        path.unlink(missing_ok=True)


def _build_request(
    source: WeightSource, locations: DownloadLocations, license_key: str | None
) -> urllib.request.Request:
    url = locations.url_for(source)
    if not url.lower().startswith(("https://", "http://")):
        raise DownloadError(f"download location {url!r} is not an http(s) URL", reason="invalid_url")
    headers = {"User-Agent": "SegNode weights download"}
    if source.license_task is None:
        return urllib.request.Request(url, headers=headers, method="GET")
    body = json.dumps(
        {
            "license_number": license_key,
            "task": source.license_task,
            "version": locations.license_client_version,
        }
    ).encode("utf-8")
    headers["Content-Type"] = "application/json"
    return urllib.request.Request(url, data=body, headers=headers, method="POST")


def download_task(
    task_name: str,
    weights_dir: Path,
    *,
    locations: DownloadLocations | None = None,
    license_key: str | None = None,
    mode: str | None = None,
    progress: TextIO | None = None,
    timeout: float = 60.0,
    force: bool = False,
    sources: Mapping[int, WeightSource] | None = None,
) -> list[Path]:
    """Download and install the weights of a task (``segnode models download``).

    Parameters
    ----------
    task_name
        A registered task (``total_mr``).
    weights_dir
        The weights folder (created if needed).
    locations
        Where to download from; ``None``: TotalSegmentator's official locations.
    license_key
        TotalSegmentator licence number, required for licensed tasks.
    mode
        ``default``, ``fast`` or ``fastest``: only that mode's part models; ``None``: every mode.
    progress
        Where the progress bar is drawn (a terminal, or a log: one line per 10 %); ``None``: nowhere.
    timeout
        Seconds a connection may stay silent.
    force
        Download part models that are already installed too.
    sources
        Each dataset's folder, release or licence-server task name and sha256; ``None``: the package data.

    Returns
    -------
    list of Path
        The model folders of the task (those already installed included), each complete.

    Raises
    ------
    LicenseError
        A licensed task without key (``license_required``), or a key the server refuses (``invalid_license``).
    DownloadError
        The server cannot be reached (``offline``), answers with an error or a truncated or corrupt body
        (``download_failed``, ``corrupt_download``), or the location is not an http(s) URL (``invalid_url``).
    InvalidWeightsError
        The zip is corrupt or does not hold the expected folders; nothing is left half-installed.
    inference.registry.UnknownTaskError, inference.registry.UnsupportedModeError
        Unknown task or mode.
    """
    task = registry.get_task(task_name)
    models = task.all_models if mode is None else task.models(registry.parse_mode(mode))
    locations = DownloadLocations.from_config() if locations is None else locations
    if task.licensed and not license_key:
        raise LicenseError(
            f"task {task_name} needs a TotalSegmentator licence: pass --license-key KEY (or set "
            "inference.license_key); licences: https://backend.totalsegmentator.com/license-academic/ . "
            "Without internet: `segnode models import ZIP_OR_FOLDER`."
        )
    weights_dir.mkdir(parents=True, exist_ok=True)
    sources = weight_sources() if sources is None else sources
    installed: list[Path] = []
    for model in models:
        if not force and not model_problems(model, weights_dir):
            logger.info("dataset %d already installed in %s", model.dataset_id, weights_dir)
            installed.append(model.model_dir(weights_dir))
            continue
        source = sources.get(model.dataset_id)
        if source is None:
            raise DownloadError(f"no download location known for nnU-Net dataset {model.dataset_id}")
        request = _build_request(source, locations, license_key)
        _download_model(model, source, request, weights_dir, progress, timeout)
        installed.append(model.model_dir(weights_dir))
    return installed


def _download_model(
    model: PartModel,
    source: WeightSource,
    request: urllib.request.Request,
    weights_dir: Path,
    progress: TextIO | None,
    timeout: float,
) -> None:
    """Fetch one dataset's zip into a temporary file in ``weights_dir``, check its sha256, install it."""
    logger.info("downloading dataset %d from %s", model.dataset_id, request.full_url)
    with _temp_file(weights_dir, ".zip") as (handle, path):
        size, sha256 = fetch(
            request,
            handle,
            label=model.dataset_folder_name,
            progress=progress,
            timeout=timeout,
            licensed=source.license_task is not None,
        )
        handle.close()
        if source.sha256 and sha256 != source.sha256:
            raise DownloadError(
                f"download from {request.full_url} is corrupt: sha256 {sha256}, expected {source.sha256}",
                reason="corrupt_download",
            )
        logger.info("dataset %d: %d bytes, sha256 %s", model.dataset_id, size, sha256)
        install_zip(path, weights_dir, expected=[model], origin=request.full_url)


# ------------------------------------------------------------------------------------ archives, import


def _known_folders() -> dict[str, PartModel]:
    return {model.dataset_folder_name: model for model in registry.part_models().values()}


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the complete folder ``new`` to ``dest`` (same file system), replacing what was there."""
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f"{TEMP_PREFIX}old-{dest.name}-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def _member_path(info: zipfile.ZipInfo, origin: str) -> PurePosixPath | None:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidWeightsError(f"{origin}: unsafe path {info.filename!r} in the zip")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidWeightsError(f"{origin}: symbolic link {info.filename!r} in the zip")
    if not path.parts or path.parts[0] == "__MACOSX":
        return None
    return path


def install_zip(
    archive: Path,
    weights_dir: Path,
    *,
    expected: Sequence[PartModel] | None = None,
    origin: str | None = None,
) -> list[PartModel]:
    """Check and extract a weights zip (dataset folders at its top level) into ``weights_dir``.

    With ``expected`` the zip must hold those models; otherwise every known dataset folder in it is installed
    and at least one must be there. Each folder is extracted to a temporary folder in ``weights_dir``,
    validated, then moved into place.
    """
    origin = origin or str(archive)
    if not zipfile.is_zipfile(archive):
        raise InvalidWeightsError(
            f"{origin} is not a zip file (truncated or corrupt?)", reason="corrupt_archive"
        )
    known = _known_folders()
    weights_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise InvalidWeightsError(
                    f"{origin}: CRC error in {bad} (corrupt zip)", reason="corrupt_archive"
                )
            members = [(info, _member_path(info, origin)) for info in zf.infolist()]
            tops = sorted({p.parts[0] for _, p in members if p is not None})
            wanted = (
                [m.dataset_folder_name for m in expected]
                if expected is not None
                else [t for t in tops if t in known]
            )
            missing = [name for name in wanted if name not in tops]
            if not wanted or missing:
                need = ", ".join(missing or sorted(known))
                raise InvalidWeightsError(
                    f"{origin}: wrong layout, expected the folder(s) {need} at the top of the zip; found "
                    f"{', '.join(tops) or 'nothing'}"
                )
            for other in (t for t in tops if t not in wanted):
                logger.warning("%s: ignoring %s (not a weights folder SegNode knows)", origin, other)
            with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + "extract-", dir=weights_dir) as tmp:
                staging = Path(tmp)
                for info, path in members:
                    if path is None or path.parts[0] not in wanted:
                        continue
                    target = staging.joinpath(*path.parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                return _place(staging, weights_dir, [known[name] for name in wanted], origin)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise InvalidWeightsError(f"{origin}: corrupt zip ({exc})", reason="corrupt_archive") from None


def _place(staging: Path, weights_dir: Path, models: Sequence[PartModel], origin: str) -> list[PartModel]:
    problems = [p for model in models for p in model_problems(model, staging)]
    if problems:
        shown = "; ".join(p.replace(str(staging) + os.sep, "") for p in problems)
        raise InvalidWeightsError(f"{origin}: wrong layout: {shown}")
    for model in models:
        dest = weights_dir / model.dataset_folder_name
        _replace_dir(staging / model.dataset_folder_name, dest)
        logger.info("installed dataset %d in %s", model.dataset_id, dest)
    return list(models)


def import_weights(path: Path, weights_dir: Path) -> list[PartModel]:
    """Install weights from a zip file or a folder without internet access (``segnode models import``).

    Parameters
    ----------
    path
        A zip with dataset folders at its top, a ``DatasetNNN_Name`` folder, or a folder holding some.
    weights_dir
        The weights folder (created if needed).

    Returns
    -------
    list of PartModel
        The part models installed. Each dataset folder is validated and moved into place whole, replacing
        what was there.

    Raises
    ------
    InvalidWeightsError
        ``path`` does not exist, holds no dataset folder SegNode knows, or one with a wrong layout (the
        message names it); a corrupt zip (``corrupt_archive``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InvalidWeightsError(f"{path} does not exist")
    if path.is_file():
        return install_zip(path, weights_dir)
    known = _known_folders()
    if path.name in known:
        folders = [path]
    else:
        folders = sorted(child for child in path.iterdir() if child.name in known and child.is_dir())
    if not folders:
        raise InvalidWeightsError(
            f"{path} holds no weights folder SegNode knows; expected one of: {', '.join(sorted(known))}"
        )
    models = [known[folder.name] for folder in folders]
    problems = [
        p for folder, model in zip(folders, models, strict=True) for p in model_problems(model, folder.parent)
    ]
    if problems:
        raise InvalidWeightsError(f"{path}: wrong layout: {'; '.join(problems)}")
    weights_dir.mkdir(parents=True, exist_ok=True)
    placed: list[PartModel] = []
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX + "import-", dir=weights_dir) as tmp:
        staging = Path(tmp)
        for folder, model in zip(folders, models, strict=True):
            dest = weights_dir / folder.name
            if dest.exists() and dest.resolve() == folder.resolve():
                logger.info("%s is already in the weights folder", folder)
                placed.append(model)
                continue
            shutil.copytree(folder, staging / folder.name, symlinks=False)
            placed += _place(staging, weights_dir, [model], str(folder))
    return placed
