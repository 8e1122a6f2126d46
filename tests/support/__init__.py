"""One copy of each test helper, imported as ``tests.support.<module>`` (the repository root is on sys.path).

- ``paths``: where the repository, the test data, the tiny models and the full MRI set lie; named series.
- ``waiting``: wait until a condition holds, with a timeout message that says what was awaited.
- ``ports``: free TCP ports; waiting until a port accepts connections.
- ``dicom``: C-ECHO and association probes (a peer is used only once it answers).
- ``dcmtk``: DCMTK tools and a ``storescp`` awaited until it answers an association.
- ``orthanc``: a real Orthanc awaited on REST and C-ECHO, driven through its REST API.
- ``serve``: ``segnode serve`` as a subprocess awaited until it answers C-ECHO; the Orthanc-facing node.
- ``settings``: node configurations for tests (loopback, port 0, files under a temporary folder).
- ``node``: in-process nodes (``NodeService``), a frozen clock, a series sent and its release recorded, raw
  C-STORE.
- ``pipeline``: a receiving node with the job pipeline's stages at hand (``PipelineContext``).
- ``scu``: a pynetdicom SCU (associations, C-STORE of files with the statuses recorded).
- ``series``: test series with their own UIDs, Part 10 helpers.
- ``audit``: read-only queries of a node's audit database.
- ``models``: model folders in TotalSegmentator's layout, zips of them.
- ``cli``: the ``segnode`` command in a new process.
- ``browser``: headless Chromium through selenium.
- ``postgres``, ``redis_server``: a real PostgreSQL and Redis on free loopback ports (the cluster tests).

Nothing here sleeps to let something happen: a peer is used once it answers, a job that must stand still in
a stage is held there (``ServeProcess.start(hold=...)``), and every wait has a condition.
"""
