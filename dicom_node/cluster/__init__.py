"""Cluster mode: receivers (``segnode serve --role receiver``) and Celery workers (``segnode worker``) on a
shared PostgreSQL database and a Redis broker.

The database is the truth and the broker carries job ids: :mod:`~dicom_node.cluster.app` (the Celery
application, queues, publishing), :mod:`~dicom_node.cluster.dispatch` (the receivers' dispatcher and
reconciler), :mod:`~dicom_node.cluster.tasks` (the stage tasks), :mod:`~dicom_node.cluster.worker` (a
worker process and its engine), :mod:`~dicom_node.cluster.completion` (series completion under the series
row lock) and :mod:`~dicom_node.cluster.housekeeping` (retention once per cluster). Job rows are written
through :class:`dicom_node.jobs.store.JobStore` and its leases (:mod:`dicom_node.jobs.leases`).
"""
