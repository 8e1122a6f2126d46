"""Defences of the receiving node against bad input, and private file modes.

* :func:`check_encoding` walks the element structure of a received data set (no value is decoded) and
  refuses one whose declared lengths run past the data: a truncated transfer, an element length beyond its
  item or data set, an undefined-length sequence or encapsulated pixel data without its delimiter, a
  deflated data set that does not inflate (or inflates beyond :data:`MAX_INFLATED_BYTES`). pydicom itself
  reads such data silently short, so without this walk a truncated instance would be stored and
  acknowledged.
* :func:`check_series` keeps one series coherent in the spool: all its instances name the same study and
  (where both give one) the same Patient ID, a SOP Instance UID stays in the series it first came with,
  and a series holds at most ``storage.max_series_instances`` instances.
* :func:`private_dir` and :func:`private_sqlite_file` give the spool folders ``0700`` and the audit
  database ``0600``; the spool's files are created ``0600`` by :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy.engine import make_url

from config.errors import SegNodeError
from dicom_node.audit.database import Database
from dicom_node.audit.log import InstanceHeader
from dicom_node.audit.tables import Instance, Series
from dicom_node.receiving import statuses as status

LOG = logging.getLogger(__name__)

#: A deflated data set that inflates to more than this is refused (decompression bomb).
MAX_INFLATED_BYTES = 1 << 30
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
#: Nesting depth of sequences beyond which a data set is refused (keeps the walk's recursion bounded).
MAX_DEPTH = 64
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class MalformedDatasetError(SegNodeError):
    """The encoded data set is structurally broken (DICOM status 0xC210 Cannot understand)."""

    reason = "malformed_dataset"


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """Walks elements, items and fragments by their declared lengths; raises at the first inconsistency."""

    def __init__(self, buf: bytes | memoryview, explicit: bool, little: bool, base: int = 0) -> None:
        self.buf = buf
        self.explicit = explicit
        self.endian = "<" if little else ">"
        self.base = base  # offset of ``buf`` in the received bytes, for messages

    def _need(self, pos: int, count: int, end: int, what: str) -> None:
        if pos + count > end:
            raise MalformedDatasetError(
                f"{what} at byte {self.base + pos} needs {count} bytes but only {max(end - pos, 0)} remain "
                "(truncated or inconsistent length)"
            )

    def _tag(self, pos: int) -> int:
        group, element = struct.unpack_from(self.endian + "HH", self.buf, pos)
        return int(group) << 16 | int(element)

    def dataset(self, pos: int, end: int, depth: int, in_item: bool) -> int:
        """Walk the elements from ``pos``; in an undefined-length item, stop after the Item Delimiter."""
        if depth > MAX_DEPTH:
            raise MalformedDatasetError(f"sequences nested deeper than {MAX_DEPTH} levels")
        while pos < end:
            self._need(pos, 8, end, "element header")
            tag = self._tag(pos)
            if tag == _ITEM_END:
                if in_item:
                    return pos + 8
                raise MalformedDatasetError(
                    f"Item Delimitation Item outside an item at byte {self.base + pos}"
                )
            if tag in (_ITEM, _SEQUENCE_END):
                raise MalformedDatasetError(f"{_tag_text(tag)} outside a sequence at byte {self.base + pos}")
            vr = b""
            if self.explicit:
                vr = bytes(self.buf[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    self._need(pos, 12, end, f"element {_tag_text(tag)} header")
                    (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 8)
                    pos += 12
                else:
                    (length,) = struct.unpack_from(self.endian + "H", self.buf, pos + 6)
                    pos += 8
            else:
                (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 4)
                pos += 8
            if length == UNDEFINED_LENGTH:
                if tag == _PIXEL_DATA and vr != b"SQ":
                    pos = self.fragments(pos, end)
                elif vr == b"UN":  # PS3.5 6.2.2: an undefined-length UN is a sequence in Implicit VR LE
                    pos = _Walker(self.buf, False, True, self.base).sequence(pos, end, depth + 1)
                elif not self.explicit or vr == b"SQ":
                    pos = self.sequence(pos, end, depth + 1)
                else:
                    raise MalformedDatasetError(
                        f"element {_tag_text(tag)} with VR {vr.decode('latin-1')!r} has an undefined length"
                    )
                continue
            self._need(pos, length, end, f"value of element {_tag_text(tag)} ({length} bytes)")
            pos += length
        if in_item:
            raise MalformedDatasetError("an undefined-length item ends without its Item Delimitation Item")
        return pos

    def sequence(self, pos: int, end: int, depth: int) -> int:
        """Walk the items of an undefined-length sequence up to and including its delimiter."""
        while True:
            self._need(pos, 8, end, "sequence item header")
            tag = self._tag(pos)
            (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise MalformedDatasetError(f"{_tag_text(tag)} where a sequence item was expected")
            if length == UNDEFINED_LENGTH:
                pos = self.dataset(pos, end, depth, in_item=True)
            else:
                self._need(pos, length, end, f"sequence item ({length} bytes)")
                pos += length

    def fragments(self, pos: int, end: int) -> int:
        """Walk the items of encapsulated pixel data up to and including the Sequence Delimiter."""
        while True:
            self._need(pos, 8, end, "pixel data fragment header")
            tag = self._tag(pos)
            (length,) = struct.unpack_from(self.endian + "L", self.buf, pos + 4)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM or length == UNDEFINED_LENGTH:
                raise MalformedDatasetError(f"{_tag_text(tag)} where a pixel data fragment was expected")
            self._need(pos, length, end, f"pixel data fragment ({length} bytes)")
            pos += length


def _dataset_offset(data: bytes) -> int:
    """Where the data set starts: after the preamble, ``DICM`` and the File Meta group, if present."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return 0
    walker = _Walker(data, explicit=True, little=True)
    pos = 132
    while pos + 8 <= len(data) and walker._tag(pos) >> 16 == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            walker._need(pos, 12, len(data), "file meta element header")
            (length,) = struct.unpack_from("<L", data, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8
        walker._need(pos, length, len(data), "file meta element value")
        pos += length
    return pos


def check_encoding(data: bytes, transfer_syntax: str) -> None:
    """Raise :class:`MalformedDatasetError` unless every declared length of ``data`` fits.

    ``data`` is what pynetdicom's ``event.encoded_dataset()`` gives (File Meta Information included or
    not); ``transfer_syntax`` is the presentation context's.
    """
    if not data:
        raise MalformedDatasetError("the data set is empty (zero-length object)")
    start = _dataset_offset(data)
    body: bytes | memoryview = memoryview(data)[start:]
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(bytes(body), MAX_INFLATED_BYTES)
        except zlib.error as exc:
            raise MalformedDatasetError(f"the deflated data set does not inflate: {exc}") from exc
        if inflater.unconsumed_tail:
            raise MalformedDatasetError(f"the deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes")
        start = 0
    if not len(body):
        raise MalformedDatasetError("the data set is empty (zero-length object)")
    explicit = transfer_syntax != ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    _Walker(body, explicit, little, base=start).dataset(0, len(body), depth=0, in_item=False)


# -- series coherence ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesRefusal:
    """Why an instance may not join its series: the DICOM status, a stable code and a sentence."""

    status: int
    code: str
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def check_series(
    db: Database,
    header: InstanceHeader,
    max_instances: int,
    patient_key: Callable[[str | None], str | None],
) -> SeriesRefusal | None:
    """Whether ``header``'s instance may join its series in the spool (``None``) or must be refused.

    ``patient_key`` maps a Patient ID to the form the audit database keeps (plain or keyed hash). The
    check reads the database: instances still on their way into it (another association's) are checked by
    the caller (:meth:`dicom_node.receiving.scp.Receiver.admit`).
    """
    series_uid = header.series_instance_uid
    with db.read() as session:
        existing = session.get(Instance, header.sop_instance_uid)
        if existing is not None and existing.series_instance_uid != series_uid:
            return SeriesRefusal(
                status.CANNOT_UNDERSTAND,
                "sop_instance_in_other_series",
                f"SOP Instance UID {header.sop_instance_uid} was received before in series "
                f"{existing.series_instance_uid}, not {series_uid}",
            )
        series = session.get(Series, series_uid)
        if series is None:
            return None
        conflict = series_conflict(
            header, patient_key(header.patient_id), series.study_instance_uid, series.patient_id
        )
        if conflict is not None:
            return conflict
        if existing is None and series.instance_count >= max_instances:
            return SeriesRefusal(
                status.OUT_OF_RESOURCES,
                "series_too_large",
                f"series {series_uid} already holds {series.instance_count} instances, the limit of "
                f"storage.max_series_instances ({max_instances})",
            )
    return None


def series_conflict(
    header: InstanceHeader, incoming_patient: str | None, study_uid: str, patient: str | None
) -> SeriesRefusal | None:
    """``mixed_series`` when ``header`` names another study or Patient ID (in the audit database's form)
    than the instances of its series received before (``study_uid``, ``patient``)."""
    series_uid = header.series_instance_uid
    if study_uid != header.study_instance_uid:
        return SeriesRefusal(
            status.CANNOT_UNDERSTAND,
            "mixed_series",
            f"Series Instance UID {series_uid} belongs to study {study_uid}; this instance names study "
            f"{header.study_instance_uid}",
        )
    if patient is not None and incoming_patient is not None and incoming_patient != patient:
        return SeriesRefusal(
            status.CANNOT_UNDERSTAND,
            "mixed_series",
            f"Series Instance UID {series_uid}: this instance names a different Patient ID than the "
            "instance(s) received before",
        )
    return None


# -- private file modes ----------------------------------------------------------------------------------


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as ``0700``; tighten it to ``0700`` if it exists."""
    missing = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    _tighten(Path(path), PRIVATE_DIR_MODE)
    return Path(path)


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        LOG.warning("%s was readable by others (mode %o); setting it to %o", path, current, mode)
        os.chmod(path, mode)


def private_sqlite_file(url: str) -> Path | None:
    """For a SQLite file URL: create the database file ``0600`` before SQLite does (its WAL and shared
    memory files then get the same mode), or tighten an existing one. Other URLs: ``None``."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    if path.parent != Path() and not path.parent.exists():
        private_dir(path.parent)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE)
    os.close(fd)
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            _tighten(companion, PRIVATE_FILE_MODE)
    return path
