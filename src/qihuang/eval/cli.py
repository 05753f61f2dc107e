"""``qihuang eval`` (run a task) and ``qihuang eval compare`` (side-by-side table + bar chart)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qihuang.errors import ConfigError

_EPILOG = """examples:
  qihuang eval --task kbqa --data data/qihuang --model default --no-grounded --out runs/kbqa-plain
  qihuang eval --task mcq --data cmexam.csv --model out/lora --shots 3 --limit 200 --out runs/mcq
  qihuang eval --task judge --data runs/kbqa-plain/predictions.jsonl --judge-base-url http://host/v1 \\
      --judge-model qwen2.5-72b-instruct --out runs/judge
  qihuang eval compare runs/kbqa-plain runs/kbqa-grounded --out runs/compare.png"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with its ``compare`` and ``tasks`` subcommands)."""
    from qihuang.config import add_options
    from qihuang.eval.base import builtin_task_names
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    p = subparsers.add_parser("eval", help="evaluate a model (kbqa, mcq, openqa, judge) or compare runs",
                              description="Evaluate a model on a task; write results.json and predictions.jsonl.",
                              epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help=f"task name ({', '.join(builtin_task_names())}, or module:Class)")
    p.add_argument("--data", help="data file or directory (kbqa/openqa: a `qihuang data build` dir uses test.jsonl)")
    p.add_argument("--out", help="output directory for results.json and predictions.jsonl")
    add_options(p, ModelOptions, GenerationOptions, AnswerOptions, EvalOptions)
    _add_task_options(p, builtin_task_names())
    p.add_argument("-o", "--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of a user-defined task (repeatable)")
    p.set_defaults(func=cmd_eval)

    sub = p.add_subparsers(dest="eval_command", metavar="{compare,tasks}")
    c = sub.add_parser("compare", help="side-by-side table and bar chart of runs",
                       description="Print the runs' scores side by side and write a bar chart PNG.")
    c.add_argument("runs", nargs="+", help="run directories (or their results.json)")
    c.add_argument("--out", dest="png", help="bar chart PNG (default: compare.png beside the first run)")
    c.add_argument("--metrics", help="comma-separated score keys (default: each task's headline scores)")
    c.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    c.set_defaults(func=cmd_compare)
    t = sub.add_parser("tasks", help="list the evaluation tasks", description="List the registered tasks.")
    t.set_defaults(func=cmd_tasks)


def _add_task_options(p: argparse.ArgumentParser, names: list[str]) -> None:
    """One ``--flag`` per option of the built-in tasks (the Task classes are the single source of help)."""
    from qihuang.eval.base import get_task

    seen: dict[str, list[str]] = {}
    options = {}
    for name in names:
        for opt in get_task(name).options:
            seen.setdefault(opt.name, []).append(name)
            options.setdefault(opt.name, opt)
    group = p.add_argument_group("task options")
    for key, opt in options.items():
        flag = "--" + key.replace("_", "-")
        described = opt.default is None or "(default" in opt.help.lower() or "default:" in opt.help.lower()
        kwargs: dict[str, Any] = {"dest": f"opt_{key}", "default": None,
                                  "help": f"[{', '.join(seen[key])}] {opt.help}"
                                          + ("" if described else f" (default: {opt.default})")}
        if opt.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = opt.type
            kwargs["metavar"] = key.upper().split("_")[-1]
            if opt.choices:
                kwargs["choices"] = opt.choices
        group.add_argument(flag, **kwargs)


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}
    for item in args.task_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--task-option {item!r}: expected KEY=VALUE")
        opts[key.strip().replace("-", "_")] = value
    return opts


def _open_kb(path: str | None) -> Any:
    from qihuang.paths import default_db

    if path is None and not default_db().exists():
        return None
    from qihuang.kb import KnowledgeBase

    return KnowledgeBase.open(path)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run one evaluation task and print its headline scores."""
    missing = [f"--{k}" for k in ("task", "data", "out") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"qihuang eval needs {', '.join(missing)} (or a subcommand: compare, tasks)")
    from qihuang.config import options_from_args
    from qihuang.eval.runner import run
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    model = options_from_args(ModelOptions, args)
    generation = options_from_args(GenerationOptions, args)
    answer = options_from_args(AnswerOptions, args)
    params = generation.params()  # invalid sampling options fail before any model is loaded
    kb = _open_kb(answer.kb)
    answer.use_departments(kb)

    def make_answerer(engine: Any, kb: Any, grounded: bool | None) -> Any:
        from qihuang.answer.answerer import Answerer

        return Answerer(engine, kb, grounded=True if grounded is None else grounded, params=params,
                        system=answer.system, on_unsupported=answer.on_unsupported, ungrounded=answer.ungrounded)

    results = run(args.task, args.data, out_dir=args.out, options=options_from_args(EvalOptions, args),
                  kb=kb, engine_loader=lambda: model.load_engine(batch_size=generation.batch_size),
                  answerer_factory=make_answerer,
                  model_info={"model": model.model, "adapter": model.adapter, "template": model.template,
                              "on_unsupported": answer.on_unsupported, "ungrounded": answer.ungrounded},
                  **_task_options(args))
    _print_summary(results, Path(args.out))
    return 0


def _print_summary(results: dict, out: Path) -> None:
    scores = results["scores"]
    keys = ["n", *results.get("headline", [])]
    width = max(len(k) for k in keys)
    print(f"{results['task']}: {results['data']['n_evaluated']} examples "
          f"({results['n_skipped']} malformed rows skipped)")
    for k in keys:
        print(f"  {k.ljust(width)}  {scores.get(k)}")
    for note in results.get("notes", []):
        print(f"  note: {note}")
    print(f"wrote {out / 'results.json'} and {out / 'predictions.jsonl'}")


def cmd_compare(args: argparse.Namespace) -> int:
    """Print runs side by side and write the bar chart."""
    from qihuang.eval.report import compare

    png = Path(args.png) if args.png else Path(args.runs[0]).resolve().parent / "compare.png"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    table = compare(args.runs, out_png=png, metrics=metrics)
    print(table.to_markdown() if args.markdown else table.format())
    print(f"wrote {png}", file=sys.stderr)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List registered tasks with their descriptions."""
    from qihuang.eval.base import get_task, task_names

    for name in task_names():
        try:
            print(f"{name:8s}  {get_task(name).description}")
        except ConfigError as exc:
            print(f"{name:8s}  (cannot load: {exc})")
    return 0
