"""Writes to the audit database: associations, instances, series and the append-only event log."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, Table, bindparam, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from config.node import PatientIdMode, PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.prepared import Prepared
from dicom_node.audit.tables import Association, Event, Instance, Series, SeriesState

LOG = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# The statements of the receiving hot path (AuditLog._new_in_open_series), built once and run on the DBAPI
# cursor (dicom_node.audit.prepared): a statement built or executed through SQLAlchemy per call costs more
# than its execution.
_SERIES = cast(Table, Series.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_ASSOCIATIONS = cast(Table, Association.__table__)
_SERIES_STATE = Prepared(
    select(_SERIES.c.state, _SERIES.c.instance_count)
    .where(_SERIES.c.series_instance_uid == bindparam("b_uid"))
    .with_for_update()
)
_INSTANCE_KNOWN = Prepared(
    select(_INSTANCES.c.sop_instance_uid).where(_INSTANCES.c.sop_instance_uid == bindparam("b_sop"))
)
_INSTANCE_COLUMNS = [column.key for column in _INSTANCES.columns]
_INSERT_INSTANCE = Prepared(_INSTANCES.insert().values({key: bindparam(key) for key in _INSTANCE_COLUMNS}))
_COUNT_IN_SERIES = Prepared(
    _SERIES.update()
    .where(_SERIES.c.series_instance_uid == bindparam("b_uid"))
    .values(instance_count=_SERIES.c.instance_count + 1, last_received_at=bindparam("b_now"))
)
_COUNT_IN_ASSOCIATION = Prepared(
    _ASSOCIATIONS.update()
    .where(_ASSOCIATIONS.c.id == bindparam("b_id"))
    .values(
        instances_received=_ASSOCIATIONS.c.instances_received + 1,
        bytes_received=_ASSOCIATIONS.c.bytes_received + bindparam("b_size"),
    )
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the node reads from an instance's header (no pixel data) to file and audit it."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    images_in_acquisition: int | None = None
    acquisition_number: str | None = None


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """The outcome of recording an instance: new, identical repeat, or repeat with different content."""

    #: new | duplicate | replaced
    outcome: str
    series_reopened: bool
    series_instance_count: int


class InstanceRecord(NamedTuple):
    """What :meth:`AuditLog.record_instances` records of a durably stored instance."""

    association_id: int | None
    header: InstanceHeader
    spool_path: str
    size: int
    sha256: str


class RecordTransaction:
    """The connection of one transaction of instance records, and an ORM session on it, made once a record
    needs one (a new series, a repeat, a complete series): the common record runs statements only."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: Session | None = None

    def session(self) -> Session:
        if self._session is None:  # joins the connection's transaction; commits nothing itself
            self._session = Session(bind=self.connection, expire_on_commit=False)
        return self._session

    def holds_series(self, uid: str) -> bool:
        """Whether the session holds the row of series ``uid`` as an object."""
        return self._session is not None and identity_key(Series, uid) in self._session.identity_map

    def flush(self) -> None:
        if self._session is not None:
            self._session.flush()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class AuditLog:
    """All audit writes of the node. Each method is one transaction."""

    def __init__(
        self, db: Database, config_hash: str, privacy: PrivacyConfig, clock: Clock = utc_now
    ) -> None:
        self.db = db
        self.config_hash = config_hash
        self.privacy = privacy
        self.clock = clock

    # -- events ---------------------------------------------------------------------------------------

    def add_event(
        self,
        session: Session,
        what: str,
        outcome: str,
        reason: str | None = None,
        *,
        association_id: int | None = None,
        job_id: int | None = None,
        calling_ae_title: str | None = None,
        study: str | None = None,
        series: str | None = None,
        sop_instance: str | None = None,
        detail: str | None = None,
    ) -> Event:
        row = Event(
            at=self.clock(),
            what=what,
            outcome=outcome,
            reason=reason,
            config_hash=self.config_hash,
            association_id=association_id,
            job_id=job_id,
            calling_ae_title=calling_ae_title,
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop_instance,
            detail=detail,
        )
        session.add(row)
        return row

    def event(self, what: str, outcome: str, reason: str | None = None, **refs: object) -> None:
        """Record one event in its own transaction (see :meth:`add_event` for the references)."""
        with self.db.write() as session:
            self.add_event(session, what, outcome, reason, **refs)  # type: ignore[arg-type]

    # -- associations ---------------------------------------------------------------------------------

    def association_requested(self, calling: str, called: str, address: str, port: int) -> int:
        with self.db.write() as session:
            row = Association(
                calling_ae_title=calling[:16],
                called_ae_title=called[:16],
                peer_address=address,
                peer_port=port,
                started_at=self.clock(),
                result="requested",
                instances_received=0,
                bytes_received=0,
            )
            session.add(row)
            session.flush()
            return row.id

    def association_rejected(self, association_id: int, reason: str, detail: str) -> None:
        with self.db.write() as session:
            row = session.get_one(Association, association_id)
            row.result = "rejected"
            row.reason = reason
            row.ended_at = self.clock()
            self.add_event(
                session,
                "association_rejected",
                "refused",
                reason,
                association_id=association_id,
                calling_ae_title=row.calling_ae_title,
                detail=detail,
            )

    def association_accepted(self, association_id: int, refused_contexts: list[str]) -> None:
        with self.db.write() as session:
            row = session.get_one(Association, association_id)
            row.result = "accepted"
            self.add_event(
                session,
                "association_accepted",
                "success",
                association_id=association_id,
                calling_ae_title=row.calling_ae_title,
                detail=f"called AE {row.called_ae_title} from {row.peer_address}:{row.peer_port}",
            )
            for text in refused_contexts:
                self.add_event(
                    session,
                    "presentation_context_refused",
                    "refused",
                    text.split(":", 1)[0],
                    association_id=association_id,
                    calling_ae_title=row.calling_ae_title,
                    detail=text,
                )

    def association_ended(self, association_id: int, result: str) -> bool:
        """Record the end of an association (released or aborted); False when it had already ended."""
        with self.db.write() as session:
            row = session.get_one(Association, association_id)
            if row.result in {"released", "aborted", "rejected"}:
                return False
            row.result = result
            row.ended_at = self.clock()
            self.add_event(
                session,
                f"association_{result}",
                "success" if result == "released" else "failure",
                None if result == "released" else "association aborted",
                association_id=association_id,
                calling_ae_title=row.calling_ae_title,
                detail=f"{row.instances_received} instances, {row.bytes_received} bytes",
            )
            return True

    # -- instances ------------------------------------------------------------------------------------

    def _patient_id(self, value: str | None) -> str | None:
        if value is None or self.privacy.patient_id is PatientIdMode.plain:
            return value
        key = self.privacy.patient_id_salt.encode("utf-8")
        return "hmac-sha256:" + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:48]

    def record_instance(
        self,
        association_id: int | None,
        header: InstanceHeader,
        spool_path: str,
        size: int,
        sha256: str,
    ) -> StoredInstance:
        """Record a durably stored instance: series upsert, instance row, association counters."""
        return self.record_instances([InstanceRecord(association_id, header, spool_path, size, sha256)])[0]

    def record_instances(self, records: Sequence[InstanceRecord]) -> list[StoredInstance]:
        """Record durably stored instances in one transaction, committed on return (rolled back on error)."""
        with self.db.write_connection() as connection:
            transaction = RecordTransaction(connection)
            try:
                results = [self.record_in(transaction, record) for record in records]
                transaction.flush()
            finally:
                transaction.close()
        return results

    def record_in(self, transaction: RecordTransaction, record: InstanceRecord) -> StoredInstance:
        """One record of :meth:`record_instances`, in its transaction."""
        now = self.clock()
        new = self._new_in_open_series(transaction, record, now)
        if new is not None:
            return new
        association_id, header, spool_path, size, sha256 = record
        session = transaction.session()
        series = self._series_for(session, header, now)
        existing = session.get(Instance, header.sop_instance_uid)
        if existing is None:
            session.add(_new_instance(association_id, header, spool_path, size, sha256, now))
            series.instance_count += 1
            outcome = "new"
        else:
            outcome = self._instance_again(session, existing, association_id, header, size, sha256, now)
        reopened = series.state == SeriesState.complete.value and outcome != "duplicate"
        if reopened:
            self._reopen(session, series, association_id, header)
        series.last_received_at = now
        if association_id is not None:  # one UPDATE, without loading the row
            _COUNT_IN_ASSOCIATION.execute(transaction.connection, {"b_id": association_id, "b_size": size})
        return StoredInstance(outcome, reopened, series.instance_count)

    def _new_in_open_series(
        self, transaction: RecordTransaction, record: InstanceRecord, now: datetime
    ) -> StoredInstance | None:
        """The common case, a new instance of an open series already recorded, in five statements on the
        connection, without ORM objects (the receiving hot path); ``None`` in every other case, which the
        ORM path records. Not where the transaction's session holds the series row as an object (its count
        would go stale)."""
        association_id, header, spool_path, size, sha256 = record
        uid = header.series_instance_uid
        if transaction.holds_series(uid):
            return None
        transaction.flush()  # what the session holds is in the database before it is read here
        connection = transaction.connection
        series = _SERIES_STATE.first(connection, {"b_uid": uid})
        if series is None or series[0] != SeriesState.open.value:
            return None
        if _INSTANCE_KNOWN.first(connection, {"b_sop": header.sop_instance_uid}) is not None:
            return None
        _INSERT_INSTANCE.execute(
            connection, _instance_values(association_id, header, spool_path, size, sha256, now)
        )
        _COUNT_IN_SERIES.execute(connection, {"b_uid": uid, "b_now": now})
        if association_id is not None:
            _COUNT_IN_ASSOCIATION.execute(connection, {"b_id": association_id, "b_size": size})
        return StoredInstance("new", False, series[1] + 1)

    def _series_for(self, session: Session, header: InstanceHeader, now: datetime) -> Series:
        """The instance's series row, locked, or a new open one (the patient attributes as the privacy
        settings allow)."""
        # the row lock orders the instances of a series that several receivers of a cluster record at once
        series = session.get(Series, header.series_instance_uid, with_for_update=True)
        if series is not None:
            return series
        series = Series(
            series_instance_uid=header.series_instance_uid,
            study_instance_uid=header.study_instance_uid,
            patient_id=self._patient_id(header.patient_id),
            patient_name=header.patient_name if self.privacy.store_patient_name else None,
            patient_birth_date=(header.patient_birth_date if self.privacy.store_patient_birth_date else None),
            modality=header.modality,
            state=SeriesState.open.value,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(series)
        return series

    def _instance_again(
        self,
        session: Session,
        existing: Instance,
        association_id: int | None,
        header: InstanceHeader,
        size: int,
        sha256: str,
        now: datetime,
    ) -> str:
        """Update the row of an instance received again and audit it; ``duplicate`` (same content) or
        ``replaced``."""
        outcome = "duplicate" if existing.sha256 == sha256 else "replaced"
        existing.times_received += 1
        existing.received_at = now
        existing.association_id = association_id
        existing.size_bytes = size
        existing.sha256 = sha256
        existing.transfer_syntax_uid = header.transfer_syntax_uid
        self.add_event(
            session,
            f"instance_{outcome}",
            "info",
            "SOP Instance UID received again"
            + (" with identical content" if outcome == "duplicate" else " with new content"),
            association_id=association_id,
            study=header.study_instance_uid,
            series=header.series_instance_uid,
            sop_instance=header.sop_instance_uid,
        )
        return outcome

    def _reopen(
        self, session: Session, series: Series, association_id: int | None, header: InstanceHeader
    ) -> None:
        """Open a complete series again for an instance that arrived after it was complete."""
        series.state = SeriesState.open.value
        series.completed_at = None
        series.completed_by = None
        self.add_event(
            session,
            "series_reopened",
            "info",
            "instance arrived after the series was complete",
            association_id=association_id,
            study=header.study_instance_uid,
            series=header.series_instance_uid,
            sop_instance=header.sop_instance_uid,
        )

    def store_failed(
        self, association_id: int | None, status: str, reason: str, sop_instance: str | None
    ) -> None:
        self.event(
            "instance_refused",
            "failure",
            reason,
            association_id=association_id,
            sop_instance=sop_instance,
            detail=status,
        )

    def open_series(self) -> list[Series]:
        """Series not complete yet (reloaded by the completion tracker at start)."""
        with self.db.read() as session:
            return list(session.scalars(select(Series).where(Series.state == SeriesState.open.value)))


def _new_instance(
    association_id: int | None, header: InstanceHeader, spool_path: str, size: int, sha256: str, now: datetime
) -> Instance:
    """The row of an instance received for the first time."""
    return Instance(**_instance_values(association_id, header, spool_path, size, sha256, now))


def _instance_values(
    association_id: int | None, header: InstanceHeader, spool_path: str, size: int, sha256: str, now: datetime
) -> dict[str, Any]:
    """The columns of the row of an instance received for the first time."""
    return {
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "series_instance_uid": header.series_instance_uid,
        "study_instance_uid": header.study_instance_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "size_bytes": size,
        "sha256": sha256,
        "spool_path": spool_path,
        "received_at": now,
        "association_id": association_id,
        "times_received": 1,
    }
