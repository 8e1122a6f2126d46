"""Shared test fixtures: where the test data lies, the tiny-model engine, a node configuration maker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.inference import InferenceConfig
from config.model import SegNodeConfig
from inference.engine import Engine
from tests.support.paths import MODELS, SHARED_MRI, TEST_MRI
from tests.support.settings import config_maker


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


@pytest.fixture(scope="session")
def engine() -> Engine:
    """One warm engine for the whole session, as the node keeps one (tiny models, CPU); torch is imported
    when the first test asks for it."""
    return Engine(InferenceConfig(weights_dir=MODELS, device="cpu"))


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SegNodeConfig]:
    """``make(**keys)``: a node configuration on 127.0.0.1, port 0, every file under ``tmp_path``
    (:func:`tests.support.settings.config_maker`)."""
    return config_maker(tmp_path)
