"""SegNode configuration: one typed model, loaded once from YAML and passed down."""

from config.errors import ConfigError, SegNodeError
from config.loader import default_config, load_config, load_config_text, parse_config
from config.model import SegNodeConfig

__all__ = [
    "ConfigError",
    "SegNodeConfig",
    "SegNodeError",
    "default_config",
    "load_config",
    "load_config_text",
    "parse_config",
]
