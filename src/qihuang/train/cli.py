"""``qihuang train``: options are generated from :class:`qihuang.config.TrainConfig` fields,
so each option has one definition and one help text."""

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
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation}
    return {}  # str, list[str] (comma-separated; validated by TrainConfig)


def register(subparsers) -> None:
    from qihuang.config import TrainConfig

    parser = subparsers.add_parser(
        "train", help=_SHORT_HELP, description=_SHORT_HELP + ". Values: defaults < --config YAML < options "
        "< key=value overrides.", argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", dest="config_file", metavar="FILE.yaml", help="YAML training config")
    for name, info in TrainConfig.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=info.description,
                            **_option_kwargs(info.annotation))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config field")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from qihuang.config import TrainConfig, load_config, parse_overrides
    from qihuang.train.run import run

    values = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
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
