"""``qihuang train``: options are generated from :class:`qihuang.config.TrainConfig` fields,
so each option has one definition and one help text. Each field is also accepted with
underscores (``--dataset_dir``), and LLaMA-Factory's names (``--model_name_or_path``, ...) come
from ``resources/llamafactory.yaml``. Boolean options take an optional value
(``--eval-at-start false``) as well as ``--no-eval-at-start``."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

_SHORT_HELP = "train a model (sft | pt | rm | dpo) on a dataset; writes adapter/model, metrics and loss.png"


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
    return {}  # str, list[str] (comma-separated; validated by TrainConfig)


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


def register(subparsers) -> None:
    from qihuang.config import TrainConfig
    from qihuang.train.aliases import aliases

    parser = subparsers.add_parser(
        "train", help=_SHORT_HELP, description=_SHORT_HELP + ". Values: defaults < --config YAML < options "
        "< key=value overrides. LLaMA-Factory option names are accepted too.", argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", dest="config_file", metavar="FILE.yaml", help="YAML training config")
    table = aliases()
    for name, info in TrainConfig.model_fields.items():
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        flags += [f"--{a}" for a, target in table.options.items() if target == name and a != name]
        parser.add_argument(*flags, dest=name, help=info.description, **_option_kwargs(info.annotation))
    for name, (target, value) in table.flags.items():
        parser.add_argument(f"--{name}", dest=f"lf_{name}", action=BoolOption,
                            help=f"LLaMA-Factory: true sets {target} to {value}")
    for name, reason in table.ignored.items():  # any value (or none); dropped with a warning
        parser.add_argument(f"--{name}", dest=f"lf_{name}", nargs="?", const=True, metavar="VALUE",
                            help=f"LLaMA-Factory: ignored ({reason})")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qihuang.config import TrainConfig, load_config, parse_overrides
    from qihuang.train.run import run

    values = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    values.update({k[3:]: v for k, v in vars(args).items() if k.startswith("lf_")})
    values.update(parse_overrides(getattr(args, "overrides", [])))
    config = load_config(getattr(args, "config_file", None), values)
    result = run(config)
    m = result.metrics
    if result.state is not None and _is_main():
        dev = f", dev loss {m['dev_loss_initial']:.4f} -> {m['dev_loss']:.4f}" if m.get("dev_loss_initial") else ""
        tps = f", {m['tokens_per_s']:.0f} tokens/s" if m.get("tokens_per_s") else ""
        print(f"trained {m['steps']} steps{dev}{tps}; output: {result.output_dir}")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
