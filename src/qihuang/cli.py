"""The ``qihuang`` console script.

Each area of the package contributes its subcommands through a ``register(subparsers)``
function in its own ``cli`` module; heavy libraries (torch, transformers) are imported
inside the command functions, so ``qihuang --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qihuang import __version__
from qihuang.errors import QihuangError

# module path -> registers these subcommands (order = order in --help)
_COMMAND_MODULES = [
    "qihuang.kb.cli",
    "qihuang.datagen.cli",
    "qihuang.train.cli",
    "qihuang.answer.cli",
    "qihuang.serve.cli",
    "qihuang.eval.cli",
    "qihuang.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qihuang",
        description="qihuang (岐黄): knowledge base → instruction data → tuning → grounded answers → evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"qihuang {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not written yet must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except QihuangError as exc:
        print(f"qihuang: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
