"""Defences of the receiving node against bad input, and private file modes.

* :func:`check_encoding` walks the element structure of a received data set (no value is decoded; the
  walker is conversion's, :mod:`conversion.dicomwalk`) and refuses one whose declared lengths run past the
  data: a truncated transfer, an element length beyond its item or data set, an undefined-length sequence
  or encapsulated pixel data without its delimiter, a deflated data set that does not inflate (or inflates
  beyond :data:`MAX_INFLATED_BYTES`). pydicom itself reads such data silently short, so without this walk
  a truncated instance would be stored and acknowledged.
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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy import bindparam, select
from sqlalchemy.engine import make_url

from config.errors import SegNodeError
from conversion.dicomwalk import Walker, WalkError, file_meta, is_part10, key_of
from conversion.rawheader import RawHeader
from dicom_node.audit.database import Database
from dicom_node.audit.log import InstanceHeader
from dicom_node.audit.prepared import Prepared
from dicom_node.audit.tables import Instance, Series
from dicom_node.receiving import statuses as status

LOG = logging.getLogger(__name__)

#: A deflated data set that inflates to more than this is refused (decompression bomb).
MAX_INFLATED_BYTES = 1 << 30
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class MalformedDatasetError(SegNodeError):
    """The encoded data set is structurally broken (DICOM status 0xC210 Cannot understand)."""

    reason = "malformed_dataset"


#: The top-level attributes the node files an instance by (:class:`InstanceHeader`), and the character set
#: its text is in: Specific Character Set, SOP Class and Instance UID, Modality, Patient's Name, ID and
#: Birth Date, Study and Series Instance UID, Acquisition Number, Images in Acquisition.
HEADER_TAGS = (
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080060,
    0x00100010,
    0x00100020,
    0x00100030,
    0x0020000D,
    0x0020000E,
    0x00200012,
    0x00201002,
)
_HEADER_KEYS = frozenset(key_of(tag) for tag in HEADER_TAGS)


def check_encoding(data: bytes, transfer_syntax: str) -> RawHeader | None:
    """Raise :class:`MalformedDatasetError` unless every declared length of ``data`` fits; return where
    the :data:`HEADER_TAGS` lie in it (``None`` for big endian, which is left to pydicom).

    ``data`` is what pynetdicom's ``event.encoded_dataset()`` gives (File Meta Information included or
    not); ``transfer_syntax`` is the presentation context's. The walk is
    :class:`conversion.dicomwalk.Walker`'s structure check (any VR, pixel data fragments included); byte
    offsets in the messages count from the start of ``data`` (of the inflated data set when deflated).
    The same walk notes where the header's attributes are, so that they are read without parsing the
    data set again (nothing is decoded until read).
    """
    if not data:
        raise MalformedDatasetError("the data set is empty (zero-length object)")
    try:
        start = file_meta(data, strict_vrs=False)[1] if is_part10(data) else 0
        body = data
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            body, start = _inflate(data[start:]), 0
        if start >= len(body):
            raise MalformedDatasetError("the data set is empty (zero-length object)")
        implicit = transfer_syntax == ImplicitVRLittleEndian
        little = transfer_syntax != ExplicitVRBigEndian
        walker: Walker[None] = Walker(body, implicit=implicit, little=little, strict_vrs=False)
        found = walker.elements(start, len(body), _HEADER_KEYS if little else frozenset())[0]
    except WalkError as exc:
        raise MalformedDatasetError(str(exc)) from exc
    return RawHeader(body, implicit, found) if little else None


def _inflate(deflated: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(deflated, MAX_INFLATED_BYTES)
    except zlib.error as exc:
        raise MalformedDatasetError(f"the deflated data set does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise MalformedDatasetError(f"the deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes")
    return body


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


_SERIES_OF_INSTANCE = Prepared(
    select(Instance.series_instance_uid).where(Instance.sop_instance_uid == bindparam("b_sop"))
)
_SERIES_ROW = Prepared(
    select(Series.study_instance_uid, Series.patient_id, Series.instance_count).where(
        Series.series_instance_uid == bindparam("b_uid")
    )
)


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
    with db.engine.connect() as connection:  # two single-row reads, statements compiled once
        found = _SERIES_OF_INSTANCE.first(connection, {"b_sop": header.sop_instance_uid})
        existing = None if found is None else found[0]
        if existing is not None and existing != series_uid:
            return SeriesRefusal(
                status.CANNOT_UNDERSTAND,
                "sop_instance_in_other_series",
                f"SOP Instance UID {header.sop_instance_uid} was received before in series "
                f"{existing}, not {series_uid}",
            )
        series = _SERIES_ROW.first(connection, {"b_uid": series_uid})
        if series is None:
            return None
        study_uid, patient, instance_count = series
        conflict = series_conflict(header, patient_key(header.patient_id), study_uid, patient)
        if conflict is not None:
            return conflict
        if existing is None and instance_count >= max_instances:
            return SeriesRefusal(
                status.OUT_OF_RESOURCES,
                "series_too_large",
                f"series {series_uid} already holds {instance_count} instances, the limit of "
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
