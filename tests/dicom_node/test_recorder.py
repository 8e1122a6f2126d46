"""Group commit of instance records: handlers waiting at the same moment share one transaction, each gets
its own outcome, and a record that fails does not take the others with it (real SQLite file)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from config.node import PrivacyConfig
from dicom_node.audit.database import Database
from dicom_node.audit.log import AuditLog, InstanceHeader, InstanceRecord, RecordTransaction, StoredInstance
from dicom_node.audit.tables import Association, Instance, Series
from dicom_node.receiving.recorder import InstanceRecorder
from tests.support.waiting import wait_until

HEADER = InstanceHeader(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
    sop_instance_uid="1.2.3.4.0",
    study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    modality="MR",
    patient_id="PAT-0042",
)


class HeldRecorder:
    """An :class:`InstanceRecorder` whose first record stays in its transaction until :meth:`go`, so that
    the records of the other threads queue up behind it."""

    def __init__(self, tmp_path: Path) -> None:
        db = Database(f"sqlite:///{tmp_path / 'audit.db'}")
        db.upgrade()
        self.audit = AuditLog(db, "f00dfeed", PrivacyConfig())
        self.association_id = self.audit.association_requested("SCU", "SEGNODE", "127.0.0.1", 1)
        self.recorder = InstanceRecorder(self.audit)
        self.gate = threading.Event()
        original = self.audit.record_in

        def held(transaction: RecordTransaction, record: InstanceRecord) -> StoredInstance:
            self.gate.wait(60)
            return original(transaction, record)

        self.audit.record_in = held  # type: ignore[method-assign]
        self.outcomes: dict[int, StoredInstance | Exception] = {}

    def record(self, number: int, spool_path: str | None, series: str = "1.2.3.4", sop: int = -1) -> None:
        sop = number if sop < 0 else sop
        header = dataclasses.replace(HEADER, series_instance_uid=series, sop_instance_uid=f"{series}.{sop}")
        try:
            self.outcomes[number] = self.recorder.record(
                self.association_id,
                header,
                spool_path,  # type: ignore[arg-type]
                100,
                "0" * 64,
            )
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            self.outcomes[number] = exc

    def run(self, paths: list[str | None], **extra: list[Any]) -> None:
        threads = [
            threading.Thread(target=self.record, args=(n, p), kwargs={k: v[n] for k, v in extra.items()})
            for n, p in enumerate(paths)
        ]
        threads[0].start()
        wait_until(lambda: self.recorder._committing, what="the first record's transaction")
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: len(self.recorder._pending) == len(paths) - 1, what="the others queued behind it")
        self.gate.set()
        for thread in threads:
            thread.join(60)

    def count(self, table: type) -> int:
        with self.audit.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_records_waiting_together_are_committed_in_one_transaction(tmp_path: Path) -> None:
    held = HeldRecorder(tmp_path)
    held.run([f"a/b/{n}.dcm" for n in range(8)])
    assert (held.recorder.transactions, held.recorder.records) == (2, 8)
    assert all(isinstance(o, StoredInstance) and o.outcome == "new" for o in held.outcomes.values())
    # in the order the threads queued them
    assert sorted(o.series_instance_count for o in held.outcomes.values()) == list(range(1, 9))  # type: ignore[union-attr]
    assert held.count(Instance) == 8
    with held.audit.db.read() as session:
        assert session.scalars(select(Series.instance_count)).one() == 8
        row = session.get_one(Association, held.association_id)
        assert (row.instances_received, row.bytes_received) == (8, 800)


def test_a_failing_record_fails_alone(tmp_path: Path) -> None:
    """One record of the shared transaction violates a constraint: the transaction is rolled back, the
    others are committed one by one, and only its own handler gets the error."""
    held = HeldRecorder(tmp_path)
    held.run(["a/b/0.dcm", "a/b/1.dcm", None, "a/b/3.dcm"])
    assert isinstance(held.outcomes[2], IntegrityError)
    assert all(isinstance(held.outcomes[n], StoredInstance) for n in (0, 1, 3))
    assert held.count(Instance) == 3
    with held.audit.db.read() as session:
        assert session.scalars(select(Series.instance_count)).one() == 3
        assert session.get_one(Association, held.association_id).instances_received == 3


def test_a_new_series_its_instances_and_a_repeat_in_one_transaction(tmp_path: Path) -> None:
    """The shared transaction creates a series and records three of its instances (the first creates the
    row, the others count on it), two more of the held record's series and a repeat of one of them."""
    held = HeldRecorder(tmp_path)
    series = ["1.2.3.4", "1.2.3.9", "1.2.3.9", "1.2.3.4", "1.2.3.9", "1.2.3.4", "1.2.3.4"]
    sops = [0, 1, 2, 3, 4, 5, 3]
    held.run([f"a/b/{n}.dcm" for n in range(7)], series=series, sop=sops)
    assert held.recorder.transactions == 2
    outcomes = [held.outcomes[n] for n in range(7)]
    assert all(isinstance(o, StoredInstance) for o in outcomes), outcomes
    # the queued records are committed in the order they were queued, which the threads decide
    assert sorted(o.outcome for o in outcomes) == ["duplicate"] + ["new"] * 6  # type: ignore[union-attr]
    assert sorted(outcomes[n].series_instance_count for n in (1, 2, 4)) == [1, 2, 3]  # type: ignore[union-attr]
    with held.audit.db.read() as session:
        counts = {
            uid: count
            for uid, count in session.execute(select(Series.series_instance_uid, Series.instance_count))
        }
        assert counts == {"1.2.3.4": 3, "1.2.3.9": 3}
        assert session.get_one(Association, held.association_id).instances_received == 7
