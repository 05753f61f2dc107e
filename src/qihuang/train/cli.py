"""``qihuang train``: options are generated from :class:`qihuang.config.TrainConfig` fields,
so each option has one definition and one help text. Each field is also accepted with
underscores (``--dataset_dir``), and LLaMA-Factory's names (``--model_name_or_path``, ...) come
from ``resources/llamafactory.yaml``. Boolean options take an optional value
(``--eval-at-start false``) as well as ``--no-eval-at-start``."""

from __future__ import annotations

import argparse

from qihuang.flags import BoolOption

_SHORT_HELP = "train a model (sft | pt | rm | dpo) on a dataset; writes adapter/model, metrics and loss.png"


def register(subparsers) -> None:
    from qihuang.config import TrainConfig
    from qihuang.flags import add_options, split_list
    from qihuang.train.aliases import aliases

    parser = subparsers.add_parser(
        "train", help=_SHORT_HELP, description=_SHORT_HELP + ". Values: defaults < --config YAML < options "
        "< key=value overrides. LLaMA-Factory option names are accepted too.", argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", dest="config_file", metavar="FILE.yaml", help="YAML training config")
    table = aliases()
    extra: dict[str, list[str]] = {}
    for alias, target in table.options.items():
        if alias != target:
            extra.setdefault(target, []).append(f"--{alias}")
    add_options(parser, TrainConfig, defaults=False, extra_flags=extra, underscores=True, exclude=("mix",))
    parser.add_argument("--mix", dest="mix", action="extend", type=split_list, metavar="FILE_OR_NAME:RATIO",
                        help=TrainConfig.model_fields["mix"].description)  # repeatable: each --mix adds sources
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
