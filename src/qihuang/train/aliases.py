"""LLaMA-Factory / Hugging Face Trainer option names accepted as aliases of :class:`TrainConfig` fields.

The mapping is data (``resources/llamafactory.yaml``), checked when loaded: every target must be a
TrainConfig field and no alias may shadow a field of another meaning. :func:`translate` rewrites a
mapping of options (a YAML config or the command line) into qihuang's names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import yaml

from qihuang.errors import ConfigError
from qihuang.paths import resource

log = logging.getLogger(__name__)
ALIAS_FILE = "llamafactory.yaml"


@dataclass(frozen=True)
class Aliases:
    options: dict[str, str]
    flags: dict[str, tuple[str, str]]
    values: dict[str, dict[str, str]]
    ignored: dict[str, str]

    def names(self) -> list[str]:
        """Every accepted foreign option name."""
        return [*self.options, *self.flags, *self.ignored]


def _mapping(data: dict, key: str, path: str) -> dict:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: field {key!r} must be a mapping")
    return value


def parse_aliases(data: Any, fields: set[str], path: str = ALIAS_FILE) -> Aliases:
    """Validate the alias data against the TrainConfig ``fields``; errors name the file and entry."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with options/flags/values/ignored")
    unknown = sorted(set(data) - {"options", "flags", "values", "ignored"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}")
    options, flags = _mapping(data, "options", path), _mapping(data, "flags", path)
    values, ignored = _mapping(data, "values", path), _mapping(data, "ignored", path)
    for name, target in options.items():
        if target not in fields:
            raise ConfigError(f"{path}: options.{name}: {target!r} is not a training config field")
        if name in fields and name != target:
            raise ConfigError(f"{path}: options.{name} would shadow the field of that name")
    for name, pair in flags.items():
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] in fields):
            raise ConfigError(f"{path}: flags.{name}: expected [config field, value]")
    for target, table in values.items():
        if target not in fields or not isinstance(table, dict):
            raise ConfigError(f"{path}: values.{target}: expected a config field with a mapping of values")
    clash = sorted((set(options) | set(flags) | set(ignored)) & (fields - set(options)))
    if clash:
        raise ConfigError(f"{path}: {clash} are qihuang config fields and cannot be aliases")
    return Aliases({str(k): str(v) for k, v in options.items()}, {str(k): (v[0], str(v[1])) for k, v in flags.items()},
                   {k: {str(a): str(b) for a, b in t.items()} for k, t in values.items()},
                   {str(k): str(v) for k, v in ignored.items()})


@lru_cache(maxsize=1)
def aliases() -> Aliases:
    """The packaged alias table."""
    from qihuang.config import TrainConfig

    path = resource(ALIAS_FILE)
    return parse_aliases(yaml.safe_load(path.read_text(encoding="utf-8")), set(TrainConfig.model_fields), str(path))


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def translate(values: dict[str, Any], source: str = "options") -> dict[str, Any]:
    """``values`` with foreign option names and values rewritten to qihuang's (ignored ones dropped)."""
    table = aliases()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in table.ignored:
            log.warning("%s: ignoring %r (%s)", source, key, table.ignored[key])
            continue
        if key in table.flags:
            field, flag_value = table.flags[key]
            if _truthy(value):
                out[field] = flag_value
            continue
        field = table.options.get(key, key)
        if field in out and key != field and out[field] != value:
            raise ConfigError(f"{source}: {key!r} and {field!r} both set, to different values")
        out[field] = value
    for field, mapping in table.values.items():
        if isinstance(out.get(field), str) and out[field] in mapping:
            out[field] = mapping[out[field]]
    return out
