"""Configuration of the cluster mode (``dicom_node/cluster``): receivers and Celery workers on a broker.

Absent (``cluster: null``, the default), ``segnode serve`` is the embedded all-in-one node. Present, the
same file configures ``segnode serve --role receiver`` and every ``segnode worker``: the broker, the queue
of each stage, how long a worker's lease on a stage lasts and when a lost task is dispatched again. The
database (``database.url``, PostgreSQL) and the folders (``storage.spool_dir``, ``pipeline.work_dir``,
``pipeline.outbox_dir``, absolute paths on a file system every machine mounts at the same place) are the
other sections' keys; :func:`cluster_problems` checks that they fit a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from config.model import SegNodeConfig

#: Broker URL schemes Celery's transports understand (Redis; RabbitMQ as the documented alternative).
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class ClusterQueues(BaseModel):
    """The broker queue of each stage (a worker names the queues it takes with ``--queues``)."""

    model_config = ConfigDict(extra="forbid")

    convert: str = Field(default="convert", description="Routing and conversion (CPU).")
    segment: str = Field(default="segment", description="Inference: one worker per GPU takes it.")
    encode: str = Field(default="encode", description="DICOM-SEG encoding and validation (CPU).")
    send: str = Field(default="send", description="C-STORE of the results to the destinations (CPU).")

    @field_validator("convert", "segment", "encode", "send")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _QUEUE_RE.fullmatch(value):
            raise ValueError("a queue name is 1-64 letters, digits, '_', '.', ':' or '-'")
        return value

    def by_stage(self) -> dict[str, str]:
        """``{stage: queue name}`` for the four stages."""
        return {"convert": self.convert, "segment": self.segment, "encode": self.encode, "send": self.send}


class ClusterConfig(BaseModel):
    """Receivers and workers of one SegNode cluster."""

    model_config = ConfigDict(extra="forbid")

    broker_url: str = Field(
        description="Celery broker: redis://host:6379/0 (or amqp://user:password@host:5672// for "
        "RabbitMQ). It carries job ids only; the database is the truth. Put a password in "
        "SEGNODE__CLUSTER__BROKER_URL, not in the file."
    )
    queues: ClusterQueues = Field(default_factory=ClusterQueues)
    lease_s: float = Field(
        default=60.0,
        ge=2,
        le=3600,
        description="A worker holds the stage of a job for this long and renews it every heartbeat_s; a "
        "worker that stops renewing (killed, machine lost) is seen as gone once its lease expires.",
    )
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="How often a busy worker renews its lease (at most lease_s / 2)."
    )
    reconcile_after_s: float = Field(
        default=120.0,
        gt=0,
        description="A stage whose task was dispatched this long ago, that no worker holds while the broker "
        "counts no task waiting in its queue, is dispatched again (the broker lost its queue); a task that "
        "waits in its queue is never sent twice. A stage whose worker's lease expired is dispatched again "
        "at once.",
    )
    dispatch_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often a receiver looks for jobs to dispatch (new jobs, retries, due deliveries, "
        "expired leases, lost tasks).",
    )
    visibility_timeout_s: float = Field(
        default=3600.0,
        ge=1,
        description="Redis: a task taken by a worker and not acknowledged within this time goes back to "
        "its queue (the redelivery of a vanished worker's task; the receivers' lease check is faster).",
    )
    redelivery_check_s: float = Field(
        default=10.0, gt=0, description="Redis: how often workers look for tasks past visibility_timeout_s."
    )

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(
                f"not a broker URL {value.split('@')[-1]!r} (use redis://host:6379/0 or amqp://host:5672//)"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat(self) -> ClusterConfig:
        if self.heartbeat_s > self.lease_s / 2:
            raise ValueError(
                f"heartbeat_s ({self.heartbeat_s:g}) must be at most half of lease_s ({self.lease_s:g}): "
                "a lease must survive one missed heartbeat"
            )
        return self


def cluster_problems(config: SegNodeConfig) -> list[str]:
    """Problems (``key.path: reason``) of a configuration with a ``cluster`` section: the database must be
    a server every machine reaches (not a SQLite file) and the folders absolute paths of a shared file
    system."""
    cluster = config.cluster
    if cluster is None:
        return []
    problems: list[str] = []
    backend = config.database.url.split(":", 1)[0].split("+", 1)[0].lower()
    if backend != "postgresql":
        problems.append(
            f"database.url: the cluster needs a database server that every receiver and worker reaches "
            f"(postgresql://...); {backend} is a file on one machine, and its one writer at a time would "
            "serialise the cluster"
        )
    folders: dict[str, Path] = {
        "storage.spool_dir": config.storage.spool_dir,
        "pipeline.work_dir": config.pipeline.work_dir,
        "pipeline.outbox_dir": config.pipeline.outbox_dir,
    }
    for key, folder in folders.items():
        if not Path(folder).is_absolute():
            problems.append(
                f"{key}: the cluster needs an absolute path on the shared file system (the same path on "
                f"every machine), not {str(folder)!r}"
            )
    return problems
