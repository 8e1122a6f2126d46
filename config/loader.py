"""Load and validate the YAML configuration; errors name the file, the key path and the reason.

Environment overrides: a variable ``SEGNODE__<SECTION>__<KEY>`` (double underscores between levels, any
case) replaces that key of the YAML file, e.g. ``SEGNODE__DATABASE__URL=postgresql://...``,
``SEGNODE__STORAGE__SPOOL_DIR=/var/lib/segnode/spool``, ``SEGNODE__PRIVACY__PATIENT_ID_SALT=...``. The value
is read as a YAML scalar (``SEGNODE__NETWORK__PORT=104`` is the integer 104). Use it for paths and secrets,
which differ per machine and must not sit in a file under version control.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from config.errors import ConfigError
from config.model import SegNodeConfig

ENV_PREFIX = "SEGNODE__"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that reports duplicate keys instead of silently keeping the last one."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed in the mapping that holds ``loc`` (for 'unknown key' messages)."""
    model: Any = SegNodeConfig
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        model = None
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if hasattr(candidate, "model_fields"):
                model = candidate
                break
    return sorted(getattr(model, "model_fields", {}))


def _reason(error: ErrorDetails) -> str:
    """Turn a pydantic error into a short reason in the words of the configuration file."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    value = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(tuple(error["loc"]))
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"must be an integer, not {value!r}"
    if kind in {"float_parsing", "float_type"}:
        return f"must be a number, not {value!r}"
    if kind in {"bool_parsing", "bool_type"}:
        return f"must be true or false, not {value!r}"
    if kind in {"string_type"}:
        return f"must be text, not {value!r}"
    if kind in {"list_type"}:
        return f"must be a list, not {type(value).__name__}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"must be a mapping of keys, not {type(value).__name__}"
    if kind == "enum":
        return f"must be one of {ctx.get('expected')}, not {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {value!r}"
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        bound = {
            "greater_than_equal": ">=",
            "greater_than": ">",
            "less_than_equal": "<=",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()), "?")
        return f"must be {bound} {limit}, not {value!r}"
    return str(error["msg"])


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """The ``SEGNODE__A__B`` variables as ``{('a', 'b'): (variable name, parsed value)}``."""
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        if not all(parts):
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):
            value = raw  # only scalars are overridden; keep the text as given
        out[parts] = (name, value)
    return out


def _apply_overrides(data: dict[str, Any], overrides: dict[tuple[str, ...], tuple[str, Any]]) -> list[str]:
    problems: list[str] = []
    for path, (name, value) in overrides.items():
        node: Any = data
        for part in path[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                problems.append(f"${name}: {'.'.join(path)}: cannot override inside a non-mapping value")
                break
            node = child
        else:
            node[path[-1]] = value
    return problems


def parse_config(
    data: object, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> SegNodeConfig:
    """Validate an already-parsed YAML document, after applying the environment overrides in ``environ``.

    Parameters
    ----------
    data
        The document as YAML gives it (a mapping; ``None`` for an empty file). It is changed in place by the
        overrides.
    source
        The name messages give the document (the file name).
    environ
        ``SEGNODE__SECTION__KEY`` variables that override keys (:func:`env_overrides`); ``None``: none.

    Returns
    -------
    SegNodeConfig
        The typed configuration, every key not given at its one default.

    Raises
    ------
    ConfigError
        Every problem found at once in ``problems``, each as ``file: key.path: reason`` (or ``$VARIABLE:
        key.path: reason`` for an override): unknown keys, wrong types, values out of range, rules across
        sections.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (root): must be a mapping of keys, not {type(data).__name__}"])
    overrides = env_overrides(environ if environ is not None else {})
    problems = _apply_overrides(data, overrides)
    try:
        config = SegNodeConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            origin = source
            for path, (name, _value) in overrides.items():
                if tuple(str(p) for p in loc[: len(path)]) == path:
                    origin = f"${name}"
            if not loc and error["type"] == "value_error":
                # problems between sections: each line already starts with its key path
                problems += [f"{origin}: {line}" for line in _reason(error).splitlines()]
            else:
                problems.append(f"{origin}: {_key_path(loc)}: {_reason(error)}")
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> SegNodeConfig:
    """Read, parse and validate a YAML configuration file (what ``segnode serve --config`` does).

    Parameters
    ----------
    path
        The YAML file (UTF-8).
    environ
        Where ``SEGNODE__SECTION__KEY`` overrides are read; ``None``: the process environment.

    Returns
    -------
    SegNodeConfig
        The typed configuration.

    Raises
    ------
    ConfigError
        The file cannot be read or is not UTF-8, is not valid YAML (line and column given), repeats a key,
        or fails validation (see :func:`parse_config`); messages name the file.
    """
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{name}: not UTF-8 text (byte {exc.start})"]) from exc
    return load_config_text(text, name, os.environ if environ is None else environ)


def load_config_text(text: str, name: str, environ: Mapping[str, str] | None = None) -> SegNodeConfig:
    """Parse and validate YAML text; ``name`` is the file name used in messages.

    Raises
    ------
    ConfigError
        As :func:`load_config` (YAML syntax with line and column, duplicate keys, validation).
    """
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        kind = "" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error: "
        raise ConfigError([f"{name}: {where}{kind}{exc.problem or exc.context}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: not valid YAML: {exc}"]) from exc
    return parse_config(data, name, environ)


def default_config(environ: Mapping[str, str] | None = None) -> SegNodeConfig:
    """The embedded defaults: the packaged ``config/example.yaml`` (plus environment overrides).

    Raises
    ------
    ConfigError
        An override in ``environ`` (default: the process environment) is invalid.
    """
    text = resources.files("config").joinpath("example.yaml").read_text(encoding="utf-8")
    return load_config_text(text, "example.yaml", os.environ if environ is None else environ)
