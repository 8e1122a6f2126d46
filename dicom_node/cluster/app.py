"""The Celery application of a SegNode cluster: broker settings, the four stage queues, publishing.

A message is a task name (``segnode.<stage>``) and one argument, the job id; everything else is read from
the database by the worker that takes it. Tasks are acknowledged late (after the stage's result is
committed), a worker prefetches one task at a time, results are not stored (the database has them).
Celery is imported here only, and only by the cluster roles: the embedded node never loads it.
"""

from __future__ import annotations

import logging
from typing import Any

from config.cluster import ClusterConfig
from config.errors import SegNodeError

LOG = logging.getLogger(__name__)

#: The stages in the order a job goes through them (``cluster.queues`` names each one's queue).
STAGES: tuple[str, ...] = ("convert", "segment", "encode", "send")
#: Seconds a publish waits for the broker before it gives up (the dispatcher tries again later).
PUBLISH_TIMEOUT_S = 5.0


class BrokerUnavailableError(SegNodeError):
    """The broker did not take a message (down, unreachable, refusing)."""

    reason = "broker_unavailable"


def task_name(stage: str) -> str:
    return f"segnode.{stage}"


def make_app(cluster: ClusterConfig, name: str = "segnode") -> Any:
    """A Celery application for ``cluster`` (not the process-wide default app)."""
    from celery import Celery
    from kombu import Queue  # type: ignore[attr-defined]

    app = Celery(name, broker=cluster.broker_url, set_as_current=False)
    queues = cluster.queues.by_stage()
    app.conf.update(
        task_queues=[Queue(q) for q in dict.fromkeys(queues.values())],  # type: ignore[no-untyped-call]
        task_routes={task_name(stage): {"queue": queue} for stage, queue in queues.items()},
        task_acks_late=True,
        task_acks_on_failure_or_timeout=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=queues["convert"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=PUBLISH_TIMEOUT_S,
        broker_transport_options={
            "visibility_timeout": cluster.visibility_timeout_s,
            "unacked_restore_interval": cluster.redelivery_check_s,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": PUBLISH_TIMEOUT_S,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_disable_rate_limits=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


class Publisher:
    """Hands ``(stage, job id)`` messages to the broker on their stage's queue."""

    def __init__(self, cluster: ClusterConfig, app: Any | None = None) -> None:
        self.queues = cluster.queues.by_stage()
        self.app = app if app is not None else make_app(cluster)

    def publish(self, stage: str, job_id: int) -> None:
        """Send the task; :class:`BrokerUnavailableError` when the broker does not take it."""
        from kombu.exceptions import KombuError, OperationalError
        from redis.exceptions import RedisError

        try:
            self.app.send_task(task_name(stage), args=[int(job_id)], queue=self.queues[stage], retry=False)
        except (OperationalError, KombuError, RedisError, OSError) as exc:
            raise BrokerUnavailableError(
                f"the broker did not take the {stage} task of job {job_id}: {type(exc).__name__}: {exc}"
            ) from exc
        LOG.debug("job %d: %s task dispatched", job_id, stage)

    def waiting(self, stage: str) -> int | None:
        """How many tasks wait in the queue of ``stage`` as the broker counts them (messages no worker has
        taken yet; a task a worker took and has not acknowledged is not counted); None when the broker
        does not answer."""
        from kombu.exceptions import KombuError, OperationalError
        from redis.exceptions import RedisError

        try:
            with self.app.connection_for_read() as connection:
                channel = connection.channel()
                try:
                    declared = channel.queue_declare(queue=self.queues[stage], passive=True)
                except connection.channel_errors:
                    return 0  # no such queue: Redis drops an empty list, RabbitMQ has not declared it yet
                finally:
                    _close_quietly(channel)
                return int(declared.message_count)
        except (OperationalError, KombuError, RedisError, OSError) as exc:
            LOG.debug("the broker did not say how many %s tasks wait: %s", stage, exc)
            return None

    def close(self) -> None:
        self.app.close()


def _close_quietly(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # a channel the broker already closed (RabbitMQ closes it on NOT_FOUND)
        LOG.debug("closing a broker channel failed", exc_info=True)
