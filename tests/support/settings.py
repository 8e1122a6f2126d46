"""Node configurations for tests: loopback, an ephemeral port, every file under a temporary folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from config.loader import parse_config
from config.model import SegNodeConfig
from tests.support.paths import MODELS


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``section.key`` (dotted, any depth) items of a configuration document in place; returns it."""
    for dotted, value in overrides.items():
        node: Any = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def set_keys(config_path: Path, **keys: Any) -> None:
    """Change keys (``section.key``) of a node's YAML configuration file."""
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config_path.write_text(yaml.safe_dump(apply_overrides(data, keys)), encoding="utf-8")


def node_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A configuration document for tests: loopback, ephemeral port, files under ``tmp_path``; calling AE
    titles STORESCU, ECHOSCU and PYSCU (any host), LOOPBACK (127.0.0.1 only) and FARAWAY (another host) may
    send to SEGNODE, RESEARCH_PACS to SEGNODE_RESEARCH."""
    data: dict[str, Any] = {
        "node": {
            "ae_titles": [
                {
                    "ae_title": "SEGNODE",
                    "allowed_callers": [
                        {"ae_title": "STORESCU"},
                        {"ae_title": "ECHOSCU"},
                        {"ae_title": "PYSCU"},
                        {"ae_title": "LOOPBACK", "host": "127.0.0.1"},
                        {"ae_title": "FARAWAY", "host": "192.0.2.10"},
                    ],
                },
                {"ae_title": "SEGNODE_RESEARCH", "allowed_callers": [{"ae_title": "RESEARCH_PACS"}]},
            ]
        },
        "network": {"bind_address": "127.0.0.1", "port": 0, "acse_timeout_s": 10, "network_timeout_s": 10},
        "storage": {"spool_dir": str(tmp_path / "spool"), "min_free_space_mb": 0},
        "completion": {"quiet_period_s": 3600, "on_association_release": False},
        "database": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
    }
    return apply_overrides(data, overrides)


def write_settings(path: Path, data: Mapping[str, Any]) -> Path:
    """Write a configuration document as the node's YAML file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(data)), encoding="utf-8")
    return path


def config_maker(tmp_path: Path) -> Callable[..., SegNodeConfig]:
    """``make(**overrides)``: a node configuration with its files under ``tmp_path`` (see node_settings)."""

    def make(**overrides: Any) -> SegNodeConfig:
        return parse_config(node_settings(tmp_path, **overrides), "test.yaml", environ={})

    return make


def inference_settings(path: Path, weights_dir: Path, **inference: Any) -> Path:
    """A configuration file with only an ``inference`` section: ``weights_dir`` and the keys given."""
    return write_settings(path, {"inference": {"weights_dir": str(weights_dir), **inference}})


def local_pipeline(folder: Path, **pipeline: Any) -> dict[str, dict[str, Any]]:
    """The ``pipeline`` and ``inference`` sections of a node that runs its jobs itself: work and outbox
    folders under ``folder``, a look for work every 0.1 s, no warm-up (plus ``pipeline``); the tiny models
    on the CPU."""
    return {
        "pipeline": {
            "work_dir": str(folder / "work"),
            "outbox_dir": str(folder / "outbox"),
            "poll_interval_s": 0.1,
            "warm_up": False,
        }
        | pipeline,
        "inference": {"weights_dir": str(MODELS), "device": "cpu"},
    }
