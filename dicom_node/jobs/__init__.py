"""Jobs: the persisted state machine, the stages that move a job, worker threads, retention, admin actions.

A job (one per completed series and matched route) moves through ``queued -> converting -> segmenting ->
encoding -> sending -> done`` or ends ``failed`` with the stage and a stable reason code
(:data:`dicom_node.jobs.store.TRANSITIONS`). A job's state is the stage whose result is still missing: a job
in ``segmenting`` has been routed and converted and waits for (or is in) inference. Each stage is a plain
function that reads what it needs by job id from the database and the spool and records its result through
the :class:`~dicom_node.jobs.store.JobStore`, the only writer of job rows:

* **converting** (:mod:`dicom_node.jobs.convert`): routing on the first run, then the stacks the route
  selects, built from the spool;
* **segmenting** (:mod:`dicom_node.jobs.segment`): each stack x task through the warm engine; label maps
  saved in the job's work folder;
* **encoding** (:mod:`dicom_node.outputs.encode`): one DICOM-SEG per label map and Segmentation Type,
  written atomically to the job's outbox and validated;
* **sending** (:mod:`dicom_node.outputs.outbox`): one delivery per destination, retried with back-off.

What the stages share is in :mod:`dicom_node.jobs.context` (configuration, folders, errors, free-space
checks) and :mod:`dicom_node.jobs.records` (what one stage hands to the next). Each stage's start, end and
duration are kept in ``Job.stage_timings`` (JSON) for ``segnode jobs show`` and the end-to-end benchmark.
The threads that run the stages are in :mod:`dicom_node.jobs.workers`.
"""
