"""SegNode, the node: its subpackages in the order a series flows through them.

* :mod:`dicom_node.receiving`: the C-STORE/C-ECHO SCP, admission checks, the spool, series completion, TLS;
* :mod:`dicom_node.jobs`: one job per completed series and route, its state machine and store (the one
  writer of job rows), the conversion and segmentation stages, worker threads, retention, admin actions;
* :mod:`dicom_node.outputs`: DICOM-SEG (and SR, overlay, RTSTRUCT), their validation, the outbox, the sender;
* :mod:`dicom_node.audit`: the audit database (tables, migrations) and the audit log;
* :mod:`dicom_node.http`, :mod:`dicom_node.cli`, :mod:`dicom_node.cluster`: the API and dashboard, the
  ``segnode`` command, the scale-out roles.

:mod:`dicom_node.service` starts and stops the parts of one process.
"""

__version__ = "0.1.0"
