"""Logging helpers: the association id and job id travel in every log record.

The ids live in context variables set by the association thread (``association_context``) or the worker
(``job_context``); :class:`ContextFilter` copies them onto each record as ``association_id`` and ``job_id``
(``-`` when unset). Only entry points call :func:`configure_logging`. SegNode never logs a patient's name
or birth date: handlers log UIDs, AE titles and statuses only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

association_id_var: ContextVar[str | None] = ContextVar("segnode_association_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("segnode_job_id", default=None)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [assoc=%(association_id)s job=%(job_id)s]: %(message)s"


class ContextFilter(logging.Filter):
    """Adds ``association_id`` and ``job_id`` from the context variables to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.association_id = association_id_var.get() or "-"
        record.job_id = job_id_var.get() or "-"
        return True


@contextlib.contextmanager
def association_context(association_id: int | str) -> Iterator[None]:
    token = association_id_var.set(str(association_id))
    try:
        yield
    finally:
        association_id_var.reset(token)


@contextlib.contextmanager
def job_context(job_id: int | str) -> Iterator[None]:
    token = job_id_var.set(str(job_id))
    try:
        yield
    finally:
        job_id_var.reset(token)


def configure_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once for an entry point: one stderr handler with the context filter."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(any(isinstance(f, ContextFilter) for f in h.filters) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.addFilter(ContextFilter())
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.handlers[:] = [handler]
    # pynetdicom logs every PDU at DEBUG and every message at INFO; keep it at WARNING unless debugging.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
