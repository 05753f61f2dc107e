"""Atomic file writes: the one place every module writes results through.

A file is written to a temporary name in the same directory and moved over the target with
``os.replace``, so readers see the old file or the new one, never half of one; a failed write
removes its temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path. The temporary name is unique per
    call, so two processes building the same cache file at once never share one."""
    return _atomic_write(path, data, "wb", None)


def _atomic_write(path: str | os.PathLike, data: str | bytes, mode: str, encoding: str | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return _atomic_write(path, text, "w", "utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON (Chinese kept readable) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """One JSON object per line to ``path`` atomically."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """The parsed YAML file at ``path`` (:func:`parse_yaml`); an unreadable or malformed file, or a mapping
    that gives one key twice, raises a ConfigError that names the file, its line where known, and ``what``
    it holds (e.g. "red-flag rules")."""
    import yaml

    from qihuang.errors import ConfigError

    try:
        return parse_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} cannot read {what}: {getattr(exc, 'problem', None) or exc}") from None


def parse_yaml(text: str) -> Any:
    """YAML text parsed safely, refusing a mapping that gives one key twice (plain YAML keeps the last and
    silently drops the first): a ``yaml.YAMLError`` whose ``problem_mark`` is the repeated key's place."""
    import yaml

    return yaml.load(text, Loader=_unique_key_loader())


@functools.lru_cache(maxsize=1)
def _unique_key_loader():
    """A safe YAML loader whose mappings refuse a key given twice."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _value in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def compile_pattern(pattern: Any, where: str) -> "re.Pattern":
    """A regular expression of a resource file compiled; a clear error naming ``where`` (file and field)
    when it is not a valid non-empty pattern (red-flag rules, question forms)."""
    import re

    from qihuang.errors import ConfigError

    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: a pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: bad regular expression {pattern!r}: {exc}") from exc
