"""``qihuang infer``, ``qihuang chat`` and ``qihuang export``.

The model, generation and answering options (:mod:`qihuang.options`) are shared with ``qihuang serve``,
``qihuang webui`` and ``qihuang eval`` (:func:`add_answer_args`, :func:`build_answerer`). Heavy imports
happen inside commands.
"""

from __future__ import annotations

import argparse
import sys

from qihuang.errors import ConfigError


def add_answer_args(p: argparse.ArgumentParser) -> None:
    """The model, generation and answering options (infer, chat, serve, webui)."""
    from qihuang.flags import add_options
    from qihuang.options import AnswerOptions, GenerationOptions, ModelOptions

    add_options(p, ModelOptions, GenerationOptions, AnswerOptions)


def open_kb(path: str | None, grounded: bool | None):
    """The KB to ground with, or None: an explicit --grounded needs one, otherwise it is optional."""
    if grounded is False:
        return None
    from pathlib import Path

    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    target = Path(path) if path else default_db()
    if not target.is_file():
        if grounded or path:
            raise ConfigError(f"knowledge base {target} not found; build it with `qihuang kb import` "
                              "or pass --no-grounded")
        print(f"note: no knowledge base at {target}: answering without grounding", file=sys.stderr)
        return None
    return KnowledgeBase.open(target)


def build_answerer(args, engine=None):
    """An :class:`Answerer` from parsed CLI options (loads the model unless ``engine`` is given)."""
    from qihuang.flags import options_from_args
    from qihuang.options import AnswerOptions, GenerationOptions, ModelOptions

    return make_answerer(options_from_args(ModelOptions, args), options_from_args(GenerationOptions, args),
                         options_from_args(AnswerOptions, args), engine=engine)


def make_answerer(model, generation, answer, engine=None):
    """An :class:`Answerer` from the option groups (:class:`ModelOptions`, :class:`GenerationOptions`,
    :class:`AnswerOptions`); loads the model unless ``engine`` is given."""
    from qihuang.answer.answerer import Answerer

    params = generation.params()  # validate before the slow model load
    kb = open_kb(answer.kb, answer.grounded)
    answer.use_departments(kb)
    if engine is None:
        engine = model.load_engine(batch_size=generation.batch_size)
    answerer = Answerer(engine, kb, grounded=kb is not None, params=params, system=answer.system,
                        on_unsupported=answer.on_unsupported, ungrounded=answer.ungrounded)
    answerer.warm()  # the first user does not wait for the linker and the triage backstop
    return answerer


# ---- commands ---------------------------------------------------------------------------------
def cmd_infer(args) -> int:
    from qihuang.answer.infer import run_infer

    report = run_infer(args.input, args.output, build_answerer(args), batch_size=args.batch_size,
                       limit=args.limit, progress=not args.quiet)
    print(f"{report['written']} answered, {report['skipped']} already in {args.output} "
          f"({report['red_flags']} red flags, {report['refused']} refused, {report['abstained']} abstained, "
          f"{report['grounded']} grounded; verification: {report['flagged']} flagged, "
          f"{report['dropped']} with sentences dropped, {report['regenerated']} regenerated)")
    return 0


def cmd_chat(args) -> int:
    from qihuang.answer.chat import run_chat

    return run_chat(build_answerer(args), sys.stdin, sys.stdout)


def cmd_export(args) -> int:
    from qihuang.flags import options_from_args
    from qihuang.models.export import export_merged
    from qihuang.options import ExportOptions

    o = options_from_args(ExportOptions, args)
    out = export_merged(o.adapter, o.out, base=o.model, template=o.template,
                        dtype="float32" if o.dtype == "auto" else o.dtype, force=o.force,
                        trust_remote_code=o.trust_remote_code)
    print(f"merged model written to {out}")
    return 0


def register(sub) -> None:
    from qihuang.flags import add_options
    from qihuang.options import ExportOptions

    p = sub.add_parser("infer", help="batch answers for a JSON/JSONL file (alpaca / HuaTuo infer.json)",
                       description="Answer every record of an alpaca JSON / JSON-lines file (the HuaTuo infer.json "
                                   "shape) and write instruction, output (reference), prediction, citations and "
                                   "triage per line. Resumable: lines already in the output are skipped.")
    p.add_argument("--input", required=True, help="JSON lines or JSON array of {instruction, input?, output?}")
    p.add_argument("--output", required=True, help="JSON-lines file to write (resumed if it exists)")
    p.add_argument("--limit", type=int, default=None, help="answer at most N records (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_answer_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("chat", help="interactive multi-turn chat with streaming (/reset, /exit)",
                       description="Chat in the terminal: answers stream as they are generated, with citations and "
                                   "red-flag triage. /reset clears the conversation, /exit quits. Works with piped "
                                   "input (one question per line). Earlier turns are kept as far as the model's "
                                   "context allows (oldest dropped first).")
    add_answer_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="merge a LoRA adapter into its base model (standalone directory)",
                       description="Merge a LoRA adapter into its base model and save a standalone model directory "
                                   "(safetensors, tokenizer, qihuang_template.json) that plain transformers and "
                                   "vLLM can load.")
    add_options(p, ExportOptions)
    p.set_defaults(func=cmd_export)
