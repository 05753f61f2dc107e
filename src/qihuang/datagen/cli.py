"""``qihuang data`` subcommands: build (templates), knowledge (knowledge tuning from questions), synth
(LLM-assisted), prefs (preference pairs), validate."""

from __future__ import annotations

import json

_KB_HELP = "knowledge-base file (default: $QIHUANG_HOME/kb.sqlite)"


def cmd_build(args) -> int:
    from qihuang.flags import options_from_args
    from qihuang.datagen.builder import build_dataset
    from qihuang.options import BuildOptions

    options = options_from_args(BuildOptions, args)
    stats = build_dataset(options.db, args.out, **options.builder_kwargs(), progress=not args.json)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    kinds = ", ".join(f"{k} {v}" for k, v in stats["kinds"].items())
    print(f"wrote {stats['total']} examples ({splits}; {kinds}) over {stats['canonical_attributes']} attributes "
          f"to {args.out} in {stats['seconds']}s ({stats['examples_per_second']} examples/s)")
    return 0


def cmd_knowledge(args) -> int:
    from qihuang.flags import options_from_args
    from qihuang.datagen.knowledge import build_knowledge
    from qihuang.kb import KnowledgeBase
    from qihuang.options import KnowledgeOptions

    o = options_from_args(KnowledgeOptions, args)
    with KnowledgeBase.open(o.db) as kb:
        stats = build_knowledge(kb, o.questions, args.out, **o.model_dump(exclude={"db", "questions"}))
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
        print(f"wrote {stats['written']} knowledge-tuning examples ({splits}) to {args.out}; "
              f"{stats['unlinked']} questions linked to nothing (see unlinked.jsonl), {stats['duplicates']} duplicates")
    return 0


def cmd_synth(args) -> int:
    from qihuang.datagen.synth import run_synth_cli

    return run_synth_cli(args)


def cmd_validate(args) -> int:
    from qihuang.datagen.validate import run_validate_cli

    return run_validate_cli(args)


def cmd_prefs(args) -> int:
    from qihuang.datagen.preferences import run_prefs_cli

    return run_prefs_cli(args)


def register(subparsers) -> None:
    """Add ``qihuang data build|knowledge|synth|prefs|validate``."""
    data = subparsers.add_parser("data", help="build, synthesize and validate instruction data",
                                 description="Instruction data from the knowledge base.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help() or 0))
    _add_build(sub)
    _add_knowledge(sub)
    _add_synth(sub)
    _add_prefs(sub)
    _add_validate(sub)


def _add_build(sub) -> None:
    from qihuang.flags import add_options
    from qihuang.options import BuildOptions

    b = sub.add_parser("build", help="template-built dataset (questions, scenarios, dialogues) from the KB")
    b.add_argument("--out", required=True, help="output dataset directory")
    b.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    add_options(b, BuildOptions)
    b.set_defaults(func=cmd_build)


def _add_synth(sub) -> None:
    from qihuang.flags import add_options
    from qihuang.options import SynthOptions

    s = sub.add_parser("synth", help="LLM-written patient questions and answers from sampled KB facts")
    s.add_argument("--db", "--kb", dest="db", help=_KB_HELP)
    s.add_argument("--out", required=True, help="output dataset directory (its cache makes reruns resume)")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    add_options(s, SynthOptions)
    s.set_defaults(func=cmd_synth)


def _add_prefs(sub) -> None:
    p = sub.add_parser("prefs", help="preference pairs (KB-faithful vs corrupted answers) for --stage rm/dpo")
    p.add_argument("--db", "--kb", dest="db", help=_KB_HELP)
    p.add_argument("--dataset", help="take the questions and splits of this `qihuang data build` directory")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--kinds", help="comma-separated corruption kinds: swap, omission, unsafe (default: all)")
    p.add_argument("--max-pairs", type=int, help="stop after this many pairs (default: no limit)")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, questions, corruptions; default: 0)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    p.set_defaults(func=cmd_prefs)


def _add_knowledge(sub) -> None:
    from qihuang.flags import add_options
    from qihuang.options import KnowledgeOptions

    k = sub.add_parser("knowledge", help="knowledge-tuning examples from your questions (link -> facts -> answer)",
                       description="Link each question to the knowledge base, retrieve its facts as the assistant "
                                   "does, and write alpaca records with 'knowledge' and provenance.")
    k.add_argument("--out", required=True, help="output dataset directory")
    k.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_options(k, KnowledgeOptions)
    k.set_defaults(func=cmd_knowledge)


def _add_validate(sub) -> None:
    v = sub.add_parser("validate", help="check alpaca or ShareGPT data (JSON or JSON lines)")
    v.add_argument("path", help="a .json/.jsonl file or a dataset directory")
    v.add_argument("--max-errors", type=int, default=50,
                   help="errors (and warnings) listed before the rest is counted instead (default: 50)")
    v.add_argument("--mode", choices=["train", "infer"], default="train",
                   help="train: records need a reference answer; infer: what `qihuang infer` accepts "
                        "(default: train)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_validate)
