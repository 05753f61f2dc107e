"""``qihuang eval`` (run a task), ``qihuang eval suite`` (a named set of published benchmarks) and
``qihuang eval compare`` (side-by-side table + bar chart; two runs: the difference with a paired bootstrap
interval)."""

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
  qihuang eval compare runs/kbqa-plain runs/kbqa-grounded --out runs/compare.png
  qihuang eval suite general --data-dir ~/benchmarks --model default --sample 200 --out runs/base-general
  qihuang eval suite general --data-dir ~/benchmarks --model default --adapter out/lora --sample 200 \\
      --out runs/tuned-general
  qihuang eval compare runs/base-general runs/tuned-general --markdown"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` (with its ``compare`` and ``tasks`` subcommands)."""
    from qihuang.flags import add_options
    from qihuang.eval.base import builtin_task_names
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    p = subparsers.add_parser("eval", help="evaluate a model (kbqa, mcq, classify, benchqa, openqa, judge, ...), "
                              "run benchmark suites, compare runs",
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

    sub = p.add_subparsers(dest="eval_command", metavar="{suite,compare,tasks}")
    _register_suite(sub)
    c = sub.add_parser("compare", help="side-by-side table and bar chart of runs",
                       description="Print the runs' scores side by side and write a bar chart PNG. Two suite runs "
                       "(or two runs of one task) are also paired question by question: each score, the "
                       "difference and its 95% paired bootstrap interval.")
    c.add_argument("runs", nargs="+", help="run directories (or their results.json): for a paired comparison, "
                                           "the base first, then the tuned one")
    c.add_argument("--out", dest="png", help="bar chart PNG (default: compare.png beside the first run)")
    c.add_argument("--metrics", help="comma-separated score keys (default: each task's headline scores)")
    c.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    c.add_argument("--subjects", action="store_true", help="paired comparison: also one line per subject")
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="paired bootstrap resamples "
                                                                            "(default: 1000)")
    c.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    c.set_defaults(func=cmd_compare)
    t = sub.add_parser("tasks", help="list the evaluation tasks", description="List the registered tasks.")
    t.set_defaults(func=cmd_tasks)


def _register_suite(sub: argparse._SubParsersAction) -> None:
    from qihuang.flags import add_options
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    s = sub.add_parser("suite", help="run a named set of published benchmarks (medical-mcq, general, ...)",
                       description="Run a suite of published benchmarks from the files you downloaded (nothing is "
                       "fetched) and write results.json, results.jsonl, report.md and suite.png; each benchmark "
                       "gets its own run directory (resumable). Without NAME: list the suites, the benchmarks and "
                       "where their files are looked for.", formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("name", nargs="?", help="a suite (medical-mcq, general, medical-clin, medical-intent, "
                                           "promptcblue) or comma-separated benchmark names")
    s.add_argument("--data-dir", help="where the downloaded benchmark files are (see the list without NAME)")
    s.add_argument("--out", help="output directory of the suite run")
    s.add_argument("--method", choices=("loglik", "generate"), help="how multiple-choice and classification "
                   "answers are picked (default: loglik; open questions are always generated)")
    s.add_argument("--shots", type=int, default=0, help="solved examples from each benchmark's dev split before "
                                                        "each question (default: 0)")
    s.add_argument("--sample", type=int, help="a seeded random sample of N questions per benchmark (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")
    s.add_argument("--only", help="comma-separated benchmarks of the suite to run")
    s.add_argument("--skip-missing", action="store_true", help="run the benchmarks that are found and list the "
                                                               "others in the report (default: stop)")
    s.add_argument("--bench-data", action="append", default=[], metavar="NAME=PATH",
                   help="the file or directory of one benchmark, wherever it is (repeatable)")
    s.add_argument("-o", "--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a task option for the benchmarks whose task has it, e.g. prompt_format=plain (repeatable)")
    add_options(s, ModelOptions, GenerationOptions, AnswerOptions, EvalOptions)
    s.set_defaults(func=cmd_suite)


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


def _open_kb(answer: Any) -> Any:
    """The KB of the answering options (with their department list), or None when there is none."""
    from qihuang.paths import default_db

    if answer.kb is None and not default_db().exists():
        return None
    from qihuang.kb import KnowledgeBase

    kb = KnowledgeBase.open(answer.kb)
    answer.use_departments(kb)
    return kb


def cmd_eval(args: argparse.Namespace) -> int:
    """Run one evaluation task and print its headline scores."""
    missing = [f"--{k}" for k in ("task", "data", "out") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"qihuang eval needs {', '.join(missing)} (or a subcommand: suite, compare, tasks)")
    from qihuang.flags import options_from_args
    from qihuang.eval.runner import run
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    from qihuang.eval.report import write_generated_predictions

    model = options_from_args(ModelOptions, args)
    generation = options_from_args(GenerationOptions, args)
    answer = options_from_args(AnswerOptions, args)
    results = run(args.task, args.data, out_dir=args.out, options=options_from_args(EvalOptions, args),
                  kb=_open_kb(answer), engine_loader=lambda: model.load_engine(batch_size=generation.batch_size),
                  answerer_factory=_answerer_factory(generation, answer), model_info=_model_info(model, answer),
                  **_task_options(args))
    write_generated_predictions(args.out)
    _print_summary(results, Path(args.out))
    return 0


def _answerer_factory(generation: Any, answer: Any) -> Any:
    """How runs build their Answerer from the command's generation and answering options."""
    params = generation.params()  # invalid sampling options fail before any model is loaded

    def make_answerer(engine: Any, kb: Any, grounded: bool | None) -> Any:
        from qihuang.answer.answerer import Answerer

        return Answerer(engine, kb, grounded=True if grounded is None else grounded, params=params,
                        system=answer.system, on_unsupported=answer.on_unsupported, ungrounded=answer.ungrounded)

    return make_answerer


def _model_info(model: Any, answer: Any) -> dict:
    return {"model": model.model, "adapter": model.adapter, "template": model.template,
            "on_unsupported": answer.on_unsupported, "ungrounded": answer.ungrounded}


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_") if flag == "--task-option" else key.strip()] = value.strip()
    return out


def cmd_suite(args: argparse.Namespace) -> int:
    """Run a benchmark suite and print its table (without NAME: list the suites and benchmarks)."""
    from qihuang.eval.suite import SuiteSettings, describe_registry, run_suite

    if not args.name:
        print(describe_registry())
        return 0
    missing = [f"--{k.replace('_', '-')}" for k in ("data_dir", "out") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"qihuang eval suite needs {', '.join(missing)}")
    from functools import cache

    from qihuang.flags import options_from_args
    from qihuang.eval.report import suite_rows, text_table
    from qihuang.options import AnswerOptions, EvalOptions, GenerationOptions, ModelOptions

    model = options_from_args(ModelOptions, args)
    generation = options_from_args(GenerationOptions, args)
    answer = options_from_args(AnswerOptions, args)
    make_answerer = _answerer_factory(generation, answer)
    settings = SuiteSettings(method=args.method, shots=args.shots, sample=args.sample, seed=args.seed,
                             only=tuple(x.strip() for x in (args.only or "").split(",") if x.strip()),
                             skip_missing=args.skip_missing, bench_data=_pairs(args.bench_data, "--bench-data"),
                             task_options=_pairs(args.task_option, "--task-option"))
    if args.shots < 0 or (args.sample is not None and args.sample < 1):
        raise ConfigError("--shots must be >= 0 and --sample >= 1")
    results = run_suite(args.name, args.data_dir, args.out, settings=settings,
                        options=options_from_args(EvalOptions, args), kb=_open_kb(answer),
                        engine_loader=cache(lambda: model.load_engine(batch_size=generation.batch_size)),
                        answerer_factory=make_answerer, model_info=_model_info(model, answer))
    print(text_table(suite_rows(results)))
    for name, tried in results["missing"].items():
        print(f"not run: {name} (looked for {', '.join(tried)})")
    out = Path(args.out)
    print(f"wrote {out / 'results.json'}, {out / 'results.jsonl'}, {out / 'report.md'} and {out / 'suite.png'}")
    return 0


def _print_summary(results: dict, out: Path) -> None:
    scores = results["scores"]
    keys = ["n", *results.get("headline", [])]
    width = max(len(k) for k in keys)
    print(f"{results['task']}: {results['data']['n_evaluated']} examples "
          f"({results['n_skipped']} malformed rows skipped)")
    method = results.get("details", {}).get("method")
    if method:
        print(f"  {'method'.ljust(width)}  {method}")
    for k in keys:
        print(f"  {k.ljust(width)}  {scores.get(k)}")
    for note in results.get("notes", []):
        print(f"  note: {note}")
    print(f"wrote {out / 'results.json'}, {out / 'predictions.jsonl'} and {out / 'generated_predictions.jsonl'}")


def cmd_compare(args: argparse.Namespace) -> int:
    """Print runs side by side and write the bar chart; two runs are also compared pairwise."""
    from qihuang.eval.paired import compare_pair
    from qihuang.eval.report import compare, load_results, plot_pairs

    png = Path(args.png) if args.png else Path(args.runs[0]).resolve().parent / "compare.png"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    suites = ["benchmarks" in load_results(r) for r in args.runs]
    if not any(suites):
        table = compare(args.runs, out_png=png, metrics=metrics)
        print(table.to_markdown() if args.markdown else table.format())
    if len(args.runs) == 2 and (all(suites) or not metrics):
        if args.bootstrap < 1:
            raise ConfigError("--bootstrap must be >= 1")
        pairs = compare_pair(args.runs[0], args.runs[1], subjects=args.subjects, n_boot=args.bootstrap, seed=args.seed)
        if pairs.rows:
            print(("\n" if not all(suites) else "") + (pairs.to_markdown() if args.markdown else pairs.format()))
            if all(suites):
                plot_pairs(pairs, png)
        elif all(suites):
            raise ConfigError("nothing to compare: " + "; ".join(pairs.notes))
    elif any(suites):
        raise ConfigError("compare suite runs two at a time (base, then tuned)")
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
