"""``qihuang data`` subcommands: build (templates), knowledge (knowledge tuning from questions), synth
(LLM-assisted), prefs (preference pairs), validate."""

from __future__ import annotations

import argparse
import json


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.replace("，", ",").split(",") if t.strip()]


def count_or_file(text: str) -> int | str:
    """``--phrasings``: a count of questions per entity and attribute, or a phrasings YAML file."""
    from pathlib import Path

    if text.strip().isdigit():
        return int(text)
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"expected a count or a phrasings YAML file, got {text!r}")
    return text


def cmd_build(args) -> int:
    from qihuang.datagen.builder import build_dataset

    count, book = (args.phrasings, None) if isinstance(args.phrasings, int) else (2, args.phrasings)
    stats = build_dataset(args.db, args.out, phrasebook=book, max_examples=args.max_examples, per_entity=args.per_entity,
                          attributes=_csv(args.attributes), seed=args.seed, balanced=args.balanced,
                          kinds=_csv(args.kinds) or (), test_entities=_csv(args.test_entities),
                          phrasings=count, dev_ratio=args.dev_ratio, test_ratio=args.test_ratio,
                          sharegpt=args.sharegpt, knowledge=args.knowledge, progress=not args.json)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    kinds = ", ".join(f"{k} {v}" for k, v in stats["kinds"].items())
    print(f"wrote {stats['total']} examples ({splits}; {kinds}) over {stats['canonical_attributes']} attributes "
          f"to {args.out} in {stats['seconds']}s ({stats['examples_per_second']} examples/s)")
    return 0


def cmd_knowledge(args) -> int:
    from qihuang.datagen.knowledge import build_knowledge
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.open(args.db) as kb:
        stats = build_knowledge(kb, args.questions, args.out, phrasings=args.phrasings, seed=args.seed,
                                dev_ratio=args.dev_ratio, test_ratio=args.test_ratio, sharegpt=args.sharegpt)
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
    b = sub.add_parser("build", help="template-built dataset (questions, scenarios, dialogues) from the KB",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--db", help="knowledge-base file (default $QIHUANG_HOME/kb.sqlite)")
    b.add_argument("--out", required=True, help="output dataset directory")
    b.add_argument("--max-examples", type=int, help="stop after this many examples")
    b.add_argument("--per-entity", type=int, help="at most this many examples per entity")
    b.add_argument("--attributes", help="comma-separated canonical attributes (default: all)")
    b.add_argument("--kinds", default="single,scenario,dialogue", help="comma-separated example kinds")
    b.add_argument("--phrasings", type=count_or_file, default=2, metavar="N|FILE",
                   help="questions per entity and attribute, or a phrasings YAML file of your own wording "
                        "(same shape as resources/phrasings.yaml)")
    b.add_argument("--seed", type=int, default=0, help="random seed (splits, phrasings, sampling)")
    b.add_argument("--balanced", action="store_true",
                   help="about equal examples per attribute; only QA-useful entity types and attributes")
    b.add_argument("--sharegpt", action="store_true", help="also write ShareGPT files")
    b.add_argument("--knowledge", choices=("answer", "retrieved"), default="answer",
                   help="knowledge block of single questions: the answer's triples, or what retrieval returns "
                        "for the question (with the answer's triples and some distractors)")
    b.add_argument("--test-entities", help="comma-separated entities forced into the test split")
    b.add_argument("--dev-ratio", type=float, default=0.05, help="share of entities in dev")
    b.add_argument("--test-ratio", type=float, default=0.05, help="share of entities in test")
    b.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    b.set_defaults(func=cmd_build)


def _add_synth(sub) -> None:
    s = sub.add_parser("synth", help="LLM-written patient questions and answers from sampled KB facts",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    s.add_argument("--model", required=True, help="model name sent to the endpoint")
    s.add_argument("--db", help="knowledge-base file (default $QIHUANG_HOME/kb.sqlite)")
    s.add_argument("--out", required=True, help="output dataset directory (its cache makes reruns resume)")
    s.add_argument("--n", type=int, default=100, help="number of fact samples to send")
    s.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    s.add_argument("--retries", type=int, default=5, help="retries on 429, 5xx, timeouts and broken replies")
    s.add_argument("--seed", type=int, default=0, help="random seed (fact sampling, splits)")
    s.add_argument("--temperature", type=float, default=0.7, help="sampling temperature sent to the model")
    s.add_argument("--sharegpt", action="store_true", help="also write ShareGPT files")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    s.set_defaults(func=cmd_synth)


def _add_prefs(sub) -> None:
    p = sub.add_parser("prefs", help="preference pairs (KB-faithful vs corrupted answers) for --stage rm/dpo",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--db", help="knowledge-base file (default $QIHUANG_HOME/kb.sqlite)")
    p.add_argument("--dataset", help="take the questions and splits of this `qihuang data build` directory")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--kinds", help="comma-separated corruption kinds: swap, omission, unsafe (default: all)")
    p.add_argument("--max-pairs", type=int, help="stop after this many pairs")
    p.add_argument("--seed", type=int, default=0, help="random seed (splits, questions, corruptions)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON (no progress bar)")
    p.set_defaults(func=cmd_prefs)


def _add_knowledge(sub) -> None:
    k = sub.add_parser("knowledge", help="knowledge-tuning examples from your questions (link -> facts -> answer)",
                       description="Link each question to the knowledge base, retrieve its facts as the assistant "
                                   "does, and write alpaca records with 'knowledge' and provenance.")
    k.add_argument("--questions", required=True, help="questions: .txt one per line, or .json/.jsonl records")
    k.add_argument("--db", help="knowledge-base file (default $QIHUANG_HOME/kb.sqlite)")
    k.add_argument("--out", required=True, help="output dataset directory")
    k.add_argument("--phrasings", metavar="FILE", help="a phrasings YAML file for the answer wording "
                   "(default: resources/phrasings.yaml)")
    k.add_argument("--seed", type=int, default=0, help="random seed (splits)")
    k.add_argument("--dev-ratio", type=float, default=0.05, help="share of entities in dev")
    k.add_argument("--test-ratio", type=float, default=0.05, help="share of entities in test")
    k.add_argument("--sharegpt", action="store_true", help="also write ShareGPT files")
    k.add_argument("--json", action="store_true", help="print the statistics as JSON")
    k.set_defaults(func=cmd_knowledge)


def _add_validate(sub) -> None:
    v = sub.add_parser("validate", help="check alpaca or ShareGPT data (JSON or JSON lines)")
    v.add_argument("path", help="a .json/.jsonl file or a dataset directory")
    v.add_argument("--max-errors", type=int, default=50,
                   help="errors (and warnings) listed before the rest is counted instead")
    v.add_argument("--mode", choices=["train", "infer"], default="train",
                   help="train: records need a reference answer; infer: what `qihuang infer` accepts")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_validate)
