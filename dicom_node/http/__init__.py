"""The node's HTTP service: REST API, Prometheus ``/metrics``, web dashboard and notifications.

The modules are imported lazily by the service (FastAPI and uvicorn load only when ``http.enabled``);
:mod:`dicom_node.http.metrics` is light and used by the receiving and job code paths for their counters.
"""
