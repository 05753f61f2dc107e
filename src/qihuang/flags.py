"""Command-line options generated from pydantic models: one field, one option, one help text.

:func:`add_options` adds one option per field of each model (``qihuang train`` from
:class:`qihuang.config.TrainConfig`, every other command from the option groups of
:mod:`qihuang.options`), :func:`options_from_args` reads them back, validated once (errors name the
option). ``Annotated[T, Cli(...)]`` gives a field more names, deprecated spellings, a converter or
a metavar.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from qihuang.errors import ConfigError


@dataclass(frozen=True)
class Cli:
    """Command-line details of a field, given as ``Annotated[T, Cli(...)]``: extra option names
    (``aliases``), hidden names that still work but warn (``deprecated``), an argparse ``type``
    converter and a ``metavar``."""

    aliases: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    type: Callable[[str], Any] | None = None
    metavar: str | None = None


def format_errors(exc: ValidationError, source: str | None, what: str = "training config",
                   flags: bool = False) -> str:
    """One line naming every invalid field (as ``--flag`` when ``flags``) and the file, if any."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
            name = f"--{loc.replace('_', '-')}" if flags else f"field {loc!r}"
            parts.append(f"{name}: {msg}{got}")
        else:
            parts.append(msg)
    prefix = f"{source}: " if source else ""
    return prefix + f"invalid {what}: " + "; ".join(parts)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class BoolOption(argparse.Action):
    """``--flag``, ``--flag true|false`` and ``--no-flag``."""

    def __init__(self, option_strings, dest, **kwargs):
        negated = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        kwargs.pop("nargs", None)
        super().__init__([*option_strings, *negated], dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string and option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        if value is not None and value.lower() not in _TRUE + _FALSE:
            parser.error(f"{option_string} takes true or false, got {value!r} (write key=value overrides "
                         "before the options, or give the flag its value)")
        setattr(namespace, self.dest, value is None or value.lower() in _TRUE)


class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: stores into the new one and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        print(f"warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, value)


def split_list(value: Any) -> Any:
    """``"a, b，c"`` -> ``["a", "b", "c"]`` (ASCII or full-width commas); other values unchanged."""
    if isinstance(value, str):
        return [v.strip() for v in value.replace("，", ",").split(",") if v.strip()]
    return value


def _option_kwargs(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _option_kwargs(inner[0]) if len(inner) == 1 else {}
    if origin is Literal:
        return {"choices": list(args)}
    if annotation is bool:
        return {"action": BoolOption}
    if annotation in (int, float):
        return {"type": annotation}
    if origin is list:
        return {"metavar": "A,B,..."}  # comma-separated, split by the model's validator
    return {}  # str


def _help(info: FieldInfo) -> str:
    """The field's description, with its default appended once (unless the text already says it)."""
    text = info.description or ""
    default = info.default
    said = "(default" in text.lower() or "default:" in text.lower()
    if info.is_required() or said or default is None or default is False or default == []:
        return text.replace("%", "%%")
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f"{text} (default: {'on' if default is True else default})".replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, *models: type[BaseModel], defaults: bool = True,
                exclude: tuple[str, ...] = (), extra_flags: dict[str, list[str]] | None = None,
                underscores: bool = False) -> None:
    """Add one option per field of each model (an argument group titled by the model's ``cli_title``).

    A field already added by an earlier model (the groups share some, e.g. ``batch_size``) is added
    once. ``defaults=False`` leaves unset options out of the parsed namespace (``qihuang train``
    layers YAML values under them); otherwise each option's default is its field's default.
    ``extra_flags`` gives more spellings of a field (``{"model": ["--model_name_or_path"]}``);
    ``underscores`` also accepts ``--field_name`` beside ``--field-name``.
    """
    added: set[str] = getattr(parser, "_qihuang_fields", set())
    parser._qihuang_fields = added  # type: ignore[attr-defined]
    for model in models:
        title = getattr(model, "cli_title", "") or None
        group = parser.add_argument_group(title) if title else parser
        for name, info in model.model_fields.items():
            if name in exclude or name in added:
                continue
            added.add(name)
            extra = (extra_flags or {}).get(name, []) + ([f"--{name}"] if underscores and "_" in name else [])
            _add_field(group, name, info, defaults, extra)


def _add_field(group, name: str, info: FieldInfo, defaults: bool, extra: list[str]) -> None:
    cli = next((m for m in info.metadata if isinstance(m, Cli)), Cli())
    flags = [f"--{name.replace('_', '-')}"]
    flags += [f"--{a}" for a in cli.aliases] + [f for f in extra if f not in flags]
    kwargs = _option_kwargs(info.annotation)
    if cli.type is not None:
        kwargs["type"] = cli.type
    if cli.metavar:
        kwargs["metavar"] = cli.metavar
    if info.is_required():
        kwargs["required"] = True
    elif defaults:
        kwargs["default"] = info.get_default(call_default_factory=True)
    else:
        kwargs["default"] = argparse.SUPPRESS
    group.add_argument(*flags, dest=name, help=_help(info), **kwargs)
    for old in cli.deprecated:
        old_kwargs = {k: v for k, v in kwargs.items() if k in ("type", "choices")}
        group.add_argument(f"--{old}", dest=name, help=argparse.SUPPRESS, action=_Deprecated, new=flags[0],
                           default=argparse.SUPPRESS, **old_kwargs)


M = typing.TypeVar("M", bound=BaseModel)


def options_from_args(model: type[M], args: argparse.Namespace | dict[str, Any], **overrides: Any) -> M:
    """The ``model`` built from the parsed options that are its fields (and ``overrides``);
    invalid values raise :class:`ConfigError` naming the option."""
    values = args if isinstance(args, dict) else vars(args)
    picked = {k: v for k, v in values.items() if k in model.model_fields}
    picked.update(overrides)
    try:
        return model.model_validate(picked)
    except ValidationError as exc:
        title = getattr(model, "cli_title", "") or model.__name__
        raise ConfigError(format_errors(exc, None, f"{title} options", flags=True)) from None
