"""``qihuang infer``, ``qihuang chat`` and ``qihuang export``.

The model/answering options are shared with ``qihuang serve`` and ``qihuang webui``
(:func:`add_answer_args`, :func:`build_answerer`). Heavy imports happen inside commands.
"""

from __future__ import annotations

import argparse
import sys

from qihuang.errors import ConfigError


def add_trust_remote_code(g) -> None:
    """--trust-remote-code (infer, chat, serve, webui, export, eval): off by default."""
    g.add_argument("--trust-remote-code", action="store_true",
                   help="let the model's own Python code run (older ChatGLM checkpoints need it). Off by default: "
                        "only for models whose code you have read or whose publisher you trust")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model/--adapter/--template/--engine/--dtype."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="base model: 'default' (embedded SmolLM2-135M-Instruct), a directory, .gguf or hub id "
                        "(default: the adapter's base, else 'default')")
    g.add_argument("--adapter", default=None, help="LoRA adapter directory (a training output)")
    g.add_argument("--template", default=None,
                   help="prompt template name or file (default: the adapter's/model's saved one, else 'auto')")
    g.add_argument("--engine", default="hf", choices=("hf", "vllm"),
                   help="generation backend (vllm: GPU serving; needs `pip install vllm`, loads a merged export)")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (auto: bf16 on GPUs and CPUs with native bf16, else float32)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0 = torch's default; 1 is fastest on a busy shared machine)")
    add_trust_remote_code(g)


def add_answer_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    """Model options plus grounding and sampling options."""
    add_model_args(p)
    g = p.add_argument_group("answering")
    g.add_argument("--grounded", action=argparse.BooleanOptionalAction, default=None,
                   help="ground answers in the knowledge base (default: on when the KB exists)")
    g.add_argument("--kb", default=None, help="knowledge-base file (default: $QIHUANG_HOME/kb.sqlite)")
    g.add_argument("--system", default=None, help="system prompt (default: the template's)")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    g.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    add_policy_args(p)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    """--on-unsupported and --ungrounded (shared by infer, chat, serve, webui and eval)."""
    from qihuang.answer.policy import DEFAULT_POLICY, POLICIES, UNGROUNDED

    g = p.add_argument_group("verification")
    g.add_argument("--on-unsupported", choices=POLICIES, default=DEFAULT_POLICY,
                   help="what to do with sentences whose claims the cited facts do not support (wrong attribute "
                        "or an entity not in the facts): flag = keep and mark them, drop = remove those sentences "
                        "or list items, regenerate = one more constrained attempt, then drop "
                        f"(default: {DEFAULT_POLICY})")
    g.add_argument("--ungrounded", choices=UNGROUNDED, default=None,
                   help="when the knowledge base has no facts for a question: abstain = a short message without "
                        "calling the model, answer = the model answers after a notice (default: abstain with the "
                        "embedded default model, answer with any other)")


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


def params_from_args(args):
    from qihuang.answer.engine import GenerationParams

    return GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, repetition_penalty=args.repetition_penalty)


def build_answerer(args, engine=None):
    """An :class:`Answerer` from parsed CLI options (loads the model unless ``engine`` is given)."""
    from qihuang.answer.answerer import Answerer
    from qihuang.answer.engine import load_engine

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    params = params_from_args(args)  # validate before the slow model load
    kb = open_kb(args.kb, args.grounded)
    if engine is None:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        engine = load_engine(args.model, adapter=args.adapter, template=args.template, backend=args.engine,
                             dtype=args.dtype, batch_size=args.batch_size,
                             trust_remote_code=args.trust_remote_code)
    answerer = Answerer(engine, kb, grounded=kb is not None, params=params, system=args.system,
                        on_unsupported=args.on_unsupported, ungrounded=args.ungrounded)
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

    return run_chat(build_answerer(args), sys.stdin, sys.stdout, history_turns=args.history_turns)


def cmd_export(args) -> int:
    from qihuang.models.export import export_merged

    out = export_merged(args.adapter, args.out, base=args.model, template=args.template, dtype=args.dtype,
                        force=args.force, trust_remote_code=args.trust_remote_code)
    print(f"merged model written to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("infer", help="batch answers for a JSON/JSONL file (alpaca / HuaTuo infer.json)",
                       description="Answer every record of an alpaca JSON / JSON-lines file (the HuaTuo infer.json "
                                   "shape) and write instruction, output (reference), prediction, citations and "
                                   "triage per line. Resumable: lines already in the output are skipped.")
    p.add_argument("--input", required=True, help="JSON lines or JSON array of {instruction, input?, output?}")
    p.add_argument("--output", required=True, help="JSON-lines file to write (resumed if it exists)")
    p.add_argument("--limit", type=int, default=None, help="answer at most N records")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_answer_args(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("chat", help="interactive multi-turn chat with streaming (/reset, /exit)",
                       description="Chat in the terminal: answers stream as they are generated, with citations and "
                                   "red-flag triage. /reset clears the conversation, /exit quits. Works with piped "
                                   "input (one question per line).")
    p.add_argument("--history-turns", type=int, default=3, help="previous turns kept in the prompt")
    add_answer_args(p, max_new_tokens=256)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("export", help="merge a LoRA adapter into its base model (standalone directory)",
                       description="Merge a LoRA adapter into its base model and save a standalone model directory "
                                   "(safetensors, tokenizer, qihuang_template.json) that plain transformers and "
                                   "vLLM can load.")
    p.add_argument("--adapter", required=True, help="LoRA adapter directory")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --force)")
    p.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter dir)")
    p.add_argument("--template", default=None, help="template to save (default: the adapter's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    add_trust_remote_code(p)
    p.set_defaults(func=cmd_export)
