"""Audit rows: append-only events, patient data by configuration, config hash on every event."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from config.node import PatientIdMode, PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog, InstanceHeader, InstanceRecord
from dicom_node.audit.tables import AppendOnlyError, Event, Instance, Series


def make_audit(tmp_path: Path, privacy: PrivacyConfig) -> AuditLog:
    db = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    db.upgrade()
    return AuditLog(db, "f00dfeed", privacy)


HEADER = InstanceHeader(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
    sop_instance_uid="1.2.3.4.5",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="MR",
    patient_id="PAT-0042",
    patient_name="Doe^Jane",
    patient_birth_date="19700101",
)


def series(audit: AuditLog) -> Series:
    with audit.db.read() as session:
        return session.scalars(select(Series)).one()


def test_patient_name_and_birth_date_are_not_stored_by_default(tmp_path: Path) -> None:
    audit = make_audit(tmp_path, PrivacyConfig())
    audit.record_instance(None, HEADER, "a/b/c.dcm", 1, "0" * 64)
    row = series(audit)
    assert (row.patient_id, row.patient_name, row.patient_birth_date) == ("PAT-0042", None, None)


def test_patient_name_and_birth_date_stored_when_configured(tmp_path: Path) -> None:
    audit = make_audit(tmp_path, PrivacyConfig(store_patient_name=True, store_patient_birth_date=True))
    audit.record_instance(None, HEADER, "a/b/c.dcm", 1, "0" * 64)
    row = series(audit)
    assert (row.patient_name, row.patient_birth_date) == ("Doe^Jane", "19700101")


def test_hashed_patient_id_is_keyed_by_the_salt(tmp_path: Path) -> None:
    audit = make_audit(tmp_path, PrivacyConfig(patient_id=PatientIdMode.hashed, patient_id_salt="s3cret"))
    audit.record_instance(None, HEADER, "a/b/c.dcm", 1, "0" * 64)
    expected = hmac.new(b"s3cret", b"PAT-0042", hashlib.sha256).hexdigest()[:48]
    assert series(audit).patient_id == f"hmac-sha256:{expected}"
    assert "PAT-0042" not in (tmp_path / "audit.db").read_bytes().decode("latin-1")


def test_events_are_append_only_and_carry_the_config_hash(tmp_path: Path) -> None:
    audit = make_audit(tmp_path, PrivacyConfig())
    audit.event("node_started", "success", detail="test")
    with audit.db.read() as session:
        [event] = session.scalars(select(Event))
    assert event.config_hash == "f00dfeed" and event.at.tzinfo is not None
    with pytest.raises(AppendOnlyError, match="append-only"), audit.db.write() as session:
        row = session.get_one(Event, event.id)
        row.reason = "rewritten"
    with pytest.raises(AppendOnlyError, match="append-only"), audit.db.write() as session:
        session.delete(session.get_one(Event, event.id))
    with audit.db.read() as session:
        assert session.get_one(Event, event.id).reason is None


def test_a_transaction_of_records_is_rolled_back_whole(tmp_path: Path) -> None:
    """A new instance of an open series (statements on the connection), a new series (through the ORM) and
    an instance whose row cannot be written: nothing of the three is in the database afterwards."""
    audit = make_audit(tmp_path, PrivacyConfig())
    audit.record_instance(None, HEADER, "a/b/5.dcm", 1, "0" * 64)
    other_series = dataclasses.replace(HEADER, series_instance_uid="1.2.3.9", sop_instance_uid="1.2.3.9.1")
    records = [
        InstanceRecord(None, dataclasses.replace(HEADER, sop_instance_uid="1.2.3.4.6"), "a/b/6.dcm", 1, "0"),
        InstanceRecord(None, other_series, "a/c/1.dcm", 1, "0" * 64),
        InstanceRecord(None, dataclasses.replace(HEADER, sop_instance_uid="1.2.3.4.7"), None, 1, "0"),  # type: ignore[arg-type]
    ]
    with pytest.raises(IntegrityError, match="spool_path"):
        audit.record_instances(records)
    with audit.db.read() as session:
        assert session.scalars(select(Series.series_instance_uid)).all() == ["1.2.3.4"]
        assert session.scalars(select(Instance.sop_instance_uid)).all() == ["1.2.3.4.5"]
    assert series(audit).instance_count == 1
    assert [r.outcome for r in audit.record_instances(records[:2])] == ["new", "new"]
    with audit.db.read() as session:
        assert sorted(session.scalars(select(Series.instance_count))) == [1, 2]
