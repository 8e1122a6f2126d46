"""The reliability tests reuse the end-to-end helpers (``tests/e2e``: a real Orthanc, ``segnode serve`` as a
subprocess) and the receiving node's test helpers (``tests/dicom_node/node_support.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "e2e", TESTS / "dicom_node"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
