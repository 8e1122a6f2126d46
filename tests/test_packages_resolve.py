"""The generic import names ``config``, ``inference``, ``conversion`` resolve inside this repository."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.support.paths import ROOT


@pytest.mark.parametrize("name", ["dicom_node", "inference", "conversion", "config"])
def test_package_resolves_inside_repository(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(ROOT / name)
