"""The configuration files shipped under deploy/ are valid, so a compose or systemd set-up starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load_config
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*segnode*.yaml")), ids=lambda p: p.name)
def test_shipped_configuration_is_valid(path: Path) -> None:
    config = load_config(path, environ={})
    assert config.routes, f"{path.name} routes nothing"
    for rule in config.routes:
        if not rule.action.ignore:
            assert set(rule.action.destinations) <= set(config.destinations)
