"""Training throughput on CPU: qihuang's trainer vs two plain transformers ``Trainer`` + PEFT references.

All arms train the default model with LoRA (r=16, alpha=32, dropout 0.05, every linear layer) on the
same examples from ``build_dataset`` (fixed seed), tokenized by the same template with the loss on the
answers only, for the same steps, batch size, learning rate and schedule:

- huatuo: what HuaTuo's finetune.py does -- ``transformers.Trainer`` on a PEFT model, random batches
  padded to the longest example, logits over the whole vocabulary at every position;
- strong: the best plain configuration a careful user would pick -- the same ``Trainer`` + PEFT with
  length-grouped batches (``train_sampling_strategy="group_by_length"``) and the loss on the answers
  only (TRL's ``SFTTrainer`` adds nothing more on CPU: its padding-free batches need flash attention);
- qihuang: ``qihuang.train.run`` with its defaults (length-grouped batches, output head only where a
  label exists, fused LoRA / RMSNorm / rotary ops, bf16 frozen base where the CPU's bf16 products measure faster).

Each arm runs in its own process (peak RSS and CPU time per process from ``os.wait4``); with
``--rounds 2`` the arms run again in reverse order and the figures add up (drifting load from
other jobs then weighs on every arm alike). A last process computes the dev loss of every adapter
(and of the untuned model) the same way: summed next-token cross-entropy over the dev answers'
tokens / their count, one example at a time. Throughput counts the trained label tokens
(non-padding, non-prompt targets) per second of training (model loading and evaluation excluded),
counted the same way for every arm. Exit status 1 when any target is MISSED.

    python benchmarks/train_throughput.py                       # 12 steps x batch 4 (48 examples), ~5 min on 2 idle cores
    python benchmarks/train_throughput.py --steps 24 --rounds 2 # longer, order-balanced
    python benchmarks/train_throughput.py --steps 4 --only qihuang --set fused_lora=false   # a lever

Measure on an otherwise idle machine: the load average before and after each arm is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ARMS = ("huatuo", "strong", "qihuang")
ROLES = (*ARMS, "eval")
TARGETS = {"huatuo": 2.5, "strong": 1.5}  # qihuang label tokens/s over each reference
DEV_LOSS_SLACK = 0.02
LORA = {"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", default="bench_out/train_throughput", help="working directory")
    p.add_argument("--db", help="knowledge base (default: $QIHUANG_HOME/kb.sqlite, CMeKG imported if missing)")
    p.add_argument("--examples", type=int, default=0,
                   help="training examples (default: steps x batch size, so every arm trains one epoch on the very "
                        "same examples and the dev losses compare like with like; with more, each arm's batches "
                        "draw a different subset)")
    p.add_argument("--dev-examples", type=int, default=32, help="dev examples (held-out entities)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of each arm")
    p.add_argument("--rounds", type=int, default=1, help="run the arms this many times, alternating the order")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine, 3%% warmup)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of each arm")
    p.add_argument("--cutoff-len", type=int, default=512)
    p.add_argument("--grounded", action=argparse.BooleanOptionalAction, default=True,
                   help="knowledge triples in the prompt (the answering path's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=ARMS, nargs="+", help="run only these arms (for measuring a lever)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="TrainConfig overrides for the qihuang arm (e.g. mixed_precision=bf16)")
    p.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)  # child processes
    args = p.parse_args(argv)
    args.examples = args.examples or args.steps * args.batch_size
    return args


# ---- data -----------------------------------------------------------------------------------------
def build_data(args, work: Path) -> tuple[Path, Path]:
    """``work/train`` (train.jsonl only) and ``work/dev`` (its train.jsonl is the dev set)."""
    from qihuang.datagen import build_dataset
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    source = work / f"source-{args.seed}"
    if not (source / "stats.json").is_file():
        db = Path(args.db) if args.db else default_db()
        if not db.is_file():
            KnowledgeBase.create(db).import_source("cmekg")
        # dev/test are held-out entities (~5% each): build enough for the dev set wanted
        total = max(1500, 2 * args.examples, 30 * args.dev_examples)
        build_dataset(db, source, max_examples=total, seed=args.seed, balanced=True)
    dirs = []
    for name, split, n in (("train", "train", args.examples), ("dev", "dev", args.dev_examples)):
        lines = (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        if len(lines) < n:
            raise SystemExit(f"{source / split}.jsonl has {len(lines)} examples, {n} wanted")
        out = work / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.jsonl").write_text("".join(lines[:n]), encoding="utf-8")
        dirs.append(out)
    return dirs[0], dirs[1]


def encode(args, dataset: Path) -> list[dict]:
    """Features exactly as qihuang's SFT stage makes them (same template, cutoff, answer-only labels)."""
    from qihuang.config import build_config
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer
    from qihuang.train.sft import prepare_data

    config = build_config({"dataset": str(dataset), "grounded": args.grounded, "cutoff_len": args.cutoff_len})
    return prepare_data(config, load_tokenizer("default"), get_template(config.template)).train


def label_count(labels) -> int:
    """Trained targets: labels after the first position that are not -100 (the loss's shift)."""
    return int((labels[..., 1:] != -100).sum())


# ---- the arms (child processes) -------------------------------------------------------------------
def run_reference(args, work: Path, role: str) -> dict:
    """A reference: transformers Trainer + PEFT, full logits everywhere; ``strong`` groups by length."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback,
                              TrainingArguments)

    from qihuang.models.load import load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    features = encode(args, work / "train")  # labels are -100 on the prompt: loss on the answers only
    tokenizer = load_tokenizer("default")
    model = AutoModelForCausalLM.from_pretrained(resolve_model("default"), dtype=torch.float32)
    torch.manual_seed(args.seed)
    model = get_peft_model(model, LoraConfig(target_modules="all-linear", bias="none", task_type="CAUSAL_LM",
                                             **LORA))
    counts = {"labels": 0, "positions": 0, "tokens": 0}
    clock: dict[str, float] = {}

    class Counting(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counts["labels"] += label_count(inputs["labels"])
            counts["positions"] += inputs["input_ids"].numel()
            counts["tokens"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    training_args = TrainingArguments(
        output_dir=str(work / "runs" / f"{role}-trainer"), per_device_train_batch_size=args.batch_size,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=int(0.03 * args.steps), weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
        logging_steps=5, save_strategy="no", report_to="none", use_cpu=True, seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True,
        train_sampling_strategy="group_by_length" if role == "strong" else "random")
    trainer = Counting(model=model, args=training_args, train_dataset=features, callbacks=[Clock()],
                       data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer.train()
    model.save_pretrained(work / "runs" / role)
    seconds = clock["end"] - clock["start"]
    return {"label_tokens": counts["labels"], "train_s": seconds, "train_cpu_s": clock["cpu_end"] - clock["cpu_start"],
            "padding": 1 - counts["tokens"] / counts["positions"]}


def run_qihuang(args, work: Path) -> dict:
    """qihuang's trainer with its defaults, on the same examples and hyper-parameters."""
    from qihuang.config import build_config, parse_overrides
    from qihuang.train import run
    from qihuang.train.callbacks import Callback
    try:
        from qihuang.train.fastlora import frozen_base_dtype
    except ImportError:  # an older qihuang (measuring a change): fp32 throughout
        def frozen_base_dtype(config):
            return None

    clock: dict[str, float] = {}

    class Clock(Callback):
        def on_train_begin(self, state, total_steps):
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_train_end(self, state):
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    config = {"model": "default", "dataset": str(work / "train"), "output": str(work / "runs" / "qihuang"),
              "overwrite": True, "grounded": args.grounded, "cutoff_len": args.cutoff_len, "finetuning": "lora",
              "lora_rank": LORA["r"], "lora_alpha": LORA["lora_alpha"], "lora_dropout": LORA["lora_dropout"],
              "lora_target": ["all"], "batch_size": args.batch_size, "grad_accum": 1, "max_steps": args.steps,
              "learning_rate": args.lr, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0,
              "max_grad_norm": 1.0, "seed": args.seed, "num_threads": args.threads, "save_steps": 10 ** 6,
              "eval_at_start": False, "logging_steps": 5, **parse_overrides(args.set)}
    metrics = run(config, callbacks=[Clock()], progress=False).metrics
    base_dtype = frozen_base_dtype(build_config(config))  # what the run chose for the frozen base
    return {"label_tokens": metrics["loss_items"], "train_s": clock["end"] - clock["start"],
            "train_cpu_s": clock["cpu_end"] - clock["cpu_start"], "loop_train_s": metrics["train_time_s"],
            "base_dtype": str(base_dtype or "torch.float32").removeprefix("torch.")}


def run_eval(args, work: Path) -> dict:
    """Dev loss of the untuned model and of each adapter, computed identically: one example at a
    time (no padding), summed cross-entropy of the answer tokens / their count."""
    import torch
    from peft import PeftModel

    from qihuang.models.load import load_model

    torch.set_num_threads(args.threads)
    dev = encode(args, work / "dev")
    losses = {}
    for name in ("untuned", *ARMS):
        adapter = work / "runs" / name
        if name != "untuned" and not (adapter / "adapter_config.json").is_file():
            continue
        model = load_model("default")
        if name != "untuned":
            model = PeftModel.from_pretrained(model, str(adapter)).eval()
        lm = model.get_base_model() if name != "untuned" else model
        total, count = 0.0, 0
        with torch.no_grad():
            for feat in dev:
                ids, labels = torch.tensor([feat["input_ids"]]), torch.tensor(feat["labels"][1:])
                keep = labels != -100  # logits only where scored: the same numbers, far less work
                hidden = lm.get_decoder()(input_ids=ids).last_hidden_state[0, :-1][keep]
                logits = lm.get_output_embeddings()(hidden)
                total += float(torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum"))
                count += int(keep.sum())
        losses[name] = total / count
    return {"dev_loss": losses, "dev_examples": len(dev)}


# ---- driver ---------------------------------------------------------------------------------------
def spawn(role: str, argv: list[str], work: Path, threads: int) -> tuple[dict, float, float]:
    """Run this script as ``--role role`` in a fresh process: its result, peak RSS (MiB) and CPU seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen([sys.executable, __file__, *argv, "--role", role], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{role} run failed (exit {proc.returncode})")
    result = json.loads((work / f"{role}.json").read_text(encoding="utf-8"))
    return result, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_line(threads: int) -> str:
    import torch

    from qihuang.models.load import bf16_training_faster, cpu_info

    model, flags = cpu_info()
    model = model or platform.processor()
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    bf16 = f"native bf16 ({', '.join(native)})" if native else "no native bf16 (no avx512_bf16/amx_bf16)"
    if native:  # what the qihuang arm's frozen base uses: bf16 only where its products measure faster
        torch.set_num_threads(threads)
        bf16 += f", bf16 training base {'chosen' if bf16_training_faster() else 'not chosen: slower than fp32 here'}"
    return (f"cpu: {model}, {os.cpu_count()} cores, flags {' '.join(f for f in FLAGS if f in flags) or '-'}; "
            f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {bf16}; "
            f"{threads} thread(s) per run")


def load_line() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


NAMES = {"huatuo": "Trainer + PEFT, HuaTuo-style (reference)",
         "strong": "Trainer + PEFT, length-grouped, answer-only loss (strong reference)",
         "qihuang": "qihuang.train.run"}


def verdicts(results: dict, rss: dict, dev: dict) -> list[tuple[str, bool]]:
    """(line, met) for each target that the arms run allow checking."""
    out = []
    if "qihuang" not in results:
        return out
    for ref, target in TARGETS.items():
        if ref not in results:
            continue
        ratio = results["qihuang"]["tok_s"] / results[ref]["tok_s"]
        rel = dev["qihuang"] / dev[ref] - 1
        out += [(f"throughput vs {ref}: {ratio:.2f}x (target >= {target})", ratio >= target),
                (f"dev loss vs {ref}: {dev['qihuang']:.4f} vs {dev[ref]:.4f} ({rel:+.2%}, target <= "
                 f"+{DEV_LOSS_SLACK:.0%})", rel <= DEV_LOSS_SLACK),
                (f"peak RSS vs {ref}: {rss['qihuang']:.0f} vs {rss[ref]:.0f} MiB (target: not higher)",
                 rss["qihuang"] <= rss[ref])]
    return out


def report(args, results: dict, rss: dict, cpu: dict, loads: dict, eval_result: dict) -> tuple[str, bool]:
    dev = eval_result["dev_loss"]
    lines = [f"train throughput: default model, LoRA r={LORA['r']} (all linear), {args.examples} examples "
             f"({'grounded, ' if args.grounded else ''}cutoff {args.cutoff_len}), {args.steps} steps x batch "
             f"{args.batch_size} x {args.rounds} round(s), lr {args.lr:g}, dev {eval_result['dev_examples']} examples",
             cpu_line(args.threads),
             "| run | label tokens | train s | label tokens/s | label tokens/CPU-s | peak RSS MiB | dev loss | "
             "load avg before -> after |", "|---|---|---|---|---|---|---|---|"]
    for role, res in results.items():
        res["tok_s"] = res["label_tokens"] / res["train_s"]
        extra = f" (frozen base {res['base_dtype']})" if res.get("base_dtype") else ""
        pad = f" ({res['padding']:.1%} padding)" if "padding" in res else ""
        lines.append(f"| {NAMES[role]}{extra}{pad} | {res['label_tokens']} | {res['train_s']:.1f} | "
                     f"{res['tok_s']:.1f} | {res['label_tokens'] / res['train_cpu_s']:.1f} | {rss[role]:.0f} | "
                     f"{dev.get(role, float('nan')):.4f} | {loads[role]} |")
    lines.append(f"untuned model dev loss: {dev['untuned']:.4f}; CPU-s: training only, all threads (less "
                 f"sensitive than wall time to other jobs); CPU s per process incl. loading: "
                 + ", ".join(f"{r} {cpu[r]:.0f}" for r in results))
    checks = verdicts(results, rss, dev)
    lines += [f"{text} {'OK' if met else 'MISSED'}" for text, met in checks]
    return "\n".join(lines), all(met for _, met in checks)


def _merge(total: dict | None, part: dict) -> dict:
    if total is None:
        return dict(part)
    for key in ("label_tokens", "train_s", "train_cpu_s"):
        total[key] += part[key]
    return total


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    work = Path(args.work).resolve()
    if args.role:
        runner = run_qihuang if args.role == "qihuang" else run_eval if args.role == "eval" else \
            (lambda a, w: run_reference(a, w, args.role))
        result = runner(args, work)
        (work / f"{args.role}.json").write_text(json.dumps(result), encoding="utf-8")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    build_data(args, work)
    for stale in ARMS:
        marker = work / "runs" / stale / "adapter_config.json"
        if marker.is_file():
            marker.unlink()
    arms = [a for a in ARMS if args.only is None or a in args.only]
    results: dict = {}
    rss: dict = {}
    cpu: dict = {}
    loads: dict = {}
    for round_ in range(args.rounds):
        for role in (arms if round_ % 2 == 0 else arms[::-1]):
            before = load_line()
            part, peak, seconds = spawn(role, argv, work, args.threads)
            results[role] = _merge(results.get(role), part)
            rss[role], cpu[role] = max(rss.get(role, 0.0), peak), cpu.get(role, 0.0) + seconds
            loads[role] = f"{before} -> {load_line()}" if role not in loads else loads[role] + " ; " + \
                f"{before} -> {load_line()}"
    eval_result, _, _ = spawn("eval", argv, work, args.threads)
    text, met = report(args, results, rss, cpu, loads, eval_result)
    print(text)
    (work / "report.txt").write_text(text + "\n", encoding="utf-8")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
