"""Group commit of the audit records of stored instances.

Every C-STORE waits until its instance's record is committed (the database's own fsync) before it is
answered with Success. With several associations storing at once, each commit used to wait for the one
before it and pay its own fsync. :class:`InstanceRecorder` lets the C-STORE handlers that are waiting at
the same moment share one transaction: the first to arrive while no commit is running commits every record
queued by then (its own included) in one transaction, the others wait for that commit, and each gets its
own result only once the transaction holding its record is committed. One association alone commits each
record at once, as before.

A transaction of several records that fails (a cluster's receivers creating the same series row at once,
a database error) is rolled back, and its records are then committed one by one, so that each handler
gets its own outcome.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicom_node.audit.log import AuditLog, InstanceHeader, InstanceRecord, StoredInstance

LOG = logging.getLogger(__name__)

#: Records committed in one transaction at most.
MAX_BATCH = 64


@dataclass(eq=False)
class _Pending:
    record: InstanceRecord
    result: StoredInstance | None = None
    error: SQLAlchemyError | None = None
    done: bool = False


class InstanceRecorder:
    """:meth:`AuditLog.record_instances` with group commit; thread-safe."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._pending: list[_Pending] = []
        self._committing = False
        self._changed = threading.Condition()
        #: Transactions committed and records in them (for the benchmark and the tests).
        self.transactions = 0
        self.records = 0

    def record(
        self, association_id: int | None, header: InstanceHeader, spool_path: str, size: int, sha256: str
    ) -> StoredInstance:
        """Record a durably stored instance; returns once its record is committed.

        Raises the :class:`SQLAlchemyError` of its own record (after one retry of an ``IntegrityError``, a
        series row another receiver of a cluster created at the same moment)."""
        item = _Pending(InstanceRecord(association_id, header, spool_path, size, sha256))
        with self._changed:
            self._pending.append(item)
        while True:
            with self._changed:
                while not item.done and self._committing:
                    self._changed.wait()
                if item.done:
                    return self._outcome(item)
                self._committing = True  # this thread commits what is queued (its own record, in order)
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                self._commit(batch)
            finally:
                with self._changed:
                    self._committing = False
                    self._changed.notify_all()

    @staticmethod
    def _outcome(item: _Pending) -> StoredInstance:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _commit(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                results = self.audit.record_instances([p.record for p in batch])
            except SQLAlchemyError as exc:
                LOG.info(
                    "a transaction of %d instance records failed (%s); recording them one by one",
                    len(batch),
                    type(exc).__name__,
                )
            else:
                self._done(batch, results)
                return
        for item in batch:
            try:
                result = self._record_one(item)
            except SQLAlchemyError as exc:
                item.error, item.done = exc, True
            else:
                self._done([item], [result])

    def _record_one(self, item: _Pending) -> StoredInstance:
        try:
            return self.audit.record_instances([item.record])[0]
        except IntegrityError:  # another receiver of a cluster created the series row at the same moment
            return self.audit.record_instances([item.record])[0]

    def _done(self, batch: list[_Pending], results: list[StoredInstance]) -> None:
        self.transactions += 1
        self.records += len(batch)
        for item, result in zip(batch, results, strict=True):
            item.result, item.done = result, True
