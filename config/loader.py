"""Load and validate the YAML configuration; errors name the file, the key path and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from config.errors import ConfigError
from config.model import SegNodeConfig


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def parse_config(data: Any, source: str = "<config>") -> SegNodeConfig:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (root): must be a mapping of keys, not {type(data).__name__}"])
    try:
        return SegNodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [f"{source}: {_key_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        ) from exc


def load_config(path: Path | str) -> SegNodeConfig:
    """Read, parse and validate a YAML configuration file."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: not valid YAML: {exc}"]) from exc
    return parse_config(data, name)
