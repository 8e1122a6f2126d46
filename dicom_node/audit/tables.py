"""The audit database schema (SQLAlchemy 2.x typed ORM); the same models work on SQLite and PostgreSQL.

Changes to this schema go with an Alembic migration in ``dicom_node/audit/migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column
from sqlalchemy.types import TypeDecorator

from config.errors import SegNodeError


class SeriesState(StrEnum):
    """Where a series stands in its reception (``Series.state``)."""

    #: Instances may still arrive; no job yet.
    open = "open"
    #: Completion decided (the rule in ``Series.completed_by``) and the series' job created. An instance
    #: with new content opens the series again.
    complete = "complete"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive; it comes back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the audit database; use an aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UID = String(64)
AE = String(16)


class Base(DeclarativeBase):
    pass


class Association(Base):
    """One association request, accepted or not."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    calling_ae_title: Mapped[str] = mapped_column(AE)
    called_ae_title: Mapped[str] = mapped_column(AE)
    peer_address: Mapped[str] = mapped_column(String(255))
    peer_port: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: requested | accepted | rejected | released | aborted
    result: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    instances_received: Mapped[int] = mapped_column(Integer, default=0)
    bytes_received: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_associations_started_at", "started_at"),)


class Series(Base):
    """A series seen by the node and its completion state."""

    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_name: Mapped[str | None] = mapped_column(String(324), nullable=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8), nullable=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: open | complete
    state: Mapped[str] = mapped_column(String(16))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the rule that completed it: quiet_period | association_release | expected_count
    completed_by: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Instance(Base):
    """A stored SOP instance (one row per SOP Instance UID, however often it was sent)."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID, ForeignKey("series.series_instance_uid"))
    study_instance_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    spool_path: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"), nullable=True)
    times_received: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_instances_series", "series_instance_uid"),)


class Job(Base):
    """The processing of one completed series; its state follows ``dicom_node.jobs.store.TRANSITIONS``."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, ForeignKey("series.series_instance_uid"))
    study_instance_uid: Mapped[str] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(16))
    failed_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The route (rule name, or ``default_route``) whose action the job carries out; set at routing.
    route: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Human-readable detail of the last failure (the stable code is ``reason``).
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: JSON: per stage, when it started and ended and how long it took (``JobStore.record_stage_timing``).
    stage_timings: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: JSON: the result files of the job (label maps, SEG objects in the outbox) and where each goes.
    outputs: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Cluster mode: when the task of the current state was handed to the broker (None: not yet).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Cluster mode: the worker (``host:pid``) holding the current stage, or the last one that held it.
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Cluster mode: until when the worker's lease on the stage runs (None: no worker holds it).
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_jobs_state", "state"), Index("ix_jobs_series", "series_instance_uid"))


class Delivery(Base):
    """The sending of one kind of a job's results to one destination: attempts, next attempt time, last
    status."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    #: Destination name from the configuration's ``destinations`` section.
    destination: Mapped[str] = mapped_column(String(64))
    #: The kind of objects delivered: seg | sr | overlay | rtstruct (each is sent, fails and is retried on
    #: its own).
    kind: Mapped[str] = mapped_column(String(16), default="seg", server_default="seg")
    #: pending | delivered | failed | cancelled
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Outcome code of the last attempt (``dicom_node.outputs.sender.SendOutcome``).
    last_outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: What the peer answered (statuses) or why the attempt failed.
    last_status: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Warning statuses returned by the peer on the delivering attempt.
    warning: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_deliveries_job", "job_id"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        UniqueConstraint("job_id", "destination", "kind", name="uq_deliveries_job_destination_kind"),
    )


class Event(Base):
    """Append-only audit event: what happened, when, outcome, reason, and the configuration in force."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    what: Mapped[str] = mapped_column(String(64))
    #: success | failure | refused | info
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    config_hash: Mapped[str] = mapped_column(String(64))
    association_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    calling_ae_title: Mapped[str | None] = mapped_column(AE, nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_events_at", "at"), Index("ix_events_what", "what"))


class AppendOnlyError(SegNodeError):
    reason = "audit_append_only"


@event.listens_for(Event, "before_update")
@event.listens_for(Event, "before_delete")
def _refuse_event_change(mapper: Mapper[Any], connection: Any, target: Event) -> None:
    raise AppendOnlyError(f"audit event {target.id} is append-only: it cannot be changed or deleted")
