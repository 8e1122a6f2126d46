"""Shared test fixtures: where the test data lies."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Small subset of real MRI shipped with the repository (see tests/data/mri/README.md).
TEST_MRI = ROOT / "tests" / "data" / "mri"
#: The full real-scanner set, present beside a developer's checkout and in CI, absent in a fresh clone.
SHARED_MRI = ROOT.parent / "shared" / "data" / "mri"
SHARED_REFERENCE = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def test_mri() -> Path:
    """The MRI subset shipped in tests/data/mri."""
    return TEST_MRI


@pytest.fixture(scope="session")
def shared_mri() -> Path:
    """The full real-scanner MRI set in ../shared/data/mri; tests using it skip when it is absent."""
    if not SHARED_MRI.is_dir():
        pytest.skip(
            f"full MRI test set not present at {SHARED_MRI} (only in a checkout with ../shared beside it)"
        )
    return SHARED_MRI


@pytest.fixture(autouse=True)
def _restore_logging_handlers() -> Iterator[None]:
    """Tests that run ``segnode`` in-process get the handler its logging set-up binds to their captured
    stderr; it is removed afterwards so that no later test logs into a closed stream."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    root.handlers[:] = before
