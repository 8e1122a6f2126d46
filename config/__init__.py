"""SegNode configuration: one typed model, loaded once from YAML and passed down."""

from config.errors import ConfigError, SegNodeError
from config.loader import load_config, parse_config
from config.model import SegNodeConfig

__all__ = ["ConfigError", "SegNodeConfig", "SegNodeError", "load_config", "parse_config"]
