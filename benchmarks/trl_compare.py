"""qihuang's DPO and reward-model training vs TRL's ``DPOTrainer`` / ``RewardTrainer``, side by side.

Both arms train the same model from the same start on the same tokens, so their losses can be
compared step by step:

- the model is built by :func:`qihuang.models.prepare.prepare_model` from the same config and seed
  (LoRA on every linear layer, dropout 0 so that no random stream differs; the RM score head
  trained in full), then either trained by ``qihuang.train.run`` or handed to TRL;
- the pairs are qihuang's tokenized features (same template, labels on the final answer + EOS);
  TRL gets them pre-tokenized (DPO: prompt / completion ids; RM: ``chosen_ids`` / ``rejected_ids``
  cut after the answer's EOS, with a pad token distinct from EOS so that TRL's classifier scores
  the EOS position, as qihuang does);
- every step sees all training pairs (batch = ``--pairs``), so the batch order cannot differ;
  same AdamW, learning rate, cosine schedule, warmup, gradient clipping, steps; DPO's reference is
  the untuned model for both (qihuang: one precomputed pass; TRL: ``precompute_ref_log_probs``).

Each arm runs in its own process: seconds per optimizer step (training loop only, model loading
and reference pass excluded), wall seconds of the whole process (imports, loading, reference
pass, training) and its peak RSS (``os.wait4``). The losses must agree within ``--tolerance``
at every step, else the run prints MISSED and exits 1.

    pip install -c constraints.txt -e '.[trl-compare]'    # trl + datasets: only this benchmark needs them
    python benchmarks/trl_compare.py --model tiny --steps 6
    python benchmarks/trl_compare.py --model default --steps 4 --pairs 8 --threads 2

Measure on an otherwise idle machine: the load average before and after is printed with the figures.
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

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("qihuang", "trl")
FACTS = [("偏头痛", "症状", "头痛、恶心、畏光", "咳嗽、腹泻"), ("感冒", "药物治疗", "对乙酰氨基酚、布洛芬", "二甲双胍、胰岛素"),
         ("高血压", "并发症", "冠心病、脑卒中", "感冒、腹泻"), ("糖尿病", "药物治疗", "二甲双胍", "布洛芬"),
         ("哮喘", "症状", "喘息、胸闷、咳嗽", "皮疹、脱发"), ("胃溃疡", "药物治疗", "奥美拉唑", "阿司匹林"),
         ("肺炎", "症状", "发热、咳嗽、咳痰", "视力下降"), ("贫血", "药物治疗", "硫酸亚铁", "华法林")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (random 2-layer Llama), 'default' or a model path")
    p.add_argument("--stages", default="dpo,rm", help="comma-separated: dpo, rm")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--pairs", type=int, default=8, help="training pairs = batch size (every step sees all)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--cutoff-len", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per arm")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per arm, alternating which arm goes first; the fastest step time of each is kept")
    p.add_argument("--tolerance", type=float, default=2e-3, help="largest |loss difference| allowed per step")
    p.add_argument("--work", default="bench_out/trl_compare")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: "<stage>:<arm>" run in a child process
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_pairs(directory: Path, n: int) -> Path:
    """``train.jsonl`` of ``n`` ranking pairs: the KB answer vs the same question with swapped values."""
    from qihuang.fileio import atomic_write_jsonl

    rows = []
    for i in range(n):
        entity, relation, good, bad = FACTS[i % len(FACTS)]
        rows.append({"instruction": f"{entity}的{relation}有哪些？", "input": "",
                     "chosen": f"{entity}的{relation}包括{good}。", "rejected": f"{entity}的{relation}包括{bad}。"})
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(directory / "train.jsonl", rows)
    return directory


def train_config(args: argparse.Namespace, stage: str, model: str, data: Path, out: Path) -> dict:
    """The one config both arms follow (the TRL arm reads the same fields)."""
    return {"stage": stage, "model": model, "dataset": str(data), "output": str(out), "overwrite": True,
            "max_steps": args.steps, "batch_size": args.pairs, "learning_rate": args.lr, "pref_beta": args.beta,
            "lora_rank": args.rank, "lora_dropout": 0.0, "cutoff_len": args.cutoff_len, "logging_steps": 1,
            "save_steps": 10**6, "eval_at_start": False, "num_threads": args.threads, "seed": args.seed,
            "lr_scheduler": "cosine", "warmup_ratio": 0.03, "max_grad_norm": 1.0, "weight_decay": 0.0}


# ---- arms (child processes) ---------------------------------------------------------------------
def run_qihuang(cfg: dict) -> dict:
    from qihuang.train import run

    metrics = run(cfg, progress=False).metrics
    return {"losses": [h["loss"] for h in metrics["history"]], "train_s": metrics["train_time_s"],
            "trainable_params": metrics["trainable_params"]}


def _features(cfg: dict):
    from qihuang.config import build_config
    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer
    from qihuang.train.preference import prepare_pair_data

    config = build_config(dict(cfg))
    tokenizer = load_tokenizer(config.model)
    return config, tokenizer, prepare_pair_data(config, tokenizer, get_template(config.template)).train


def _answer_span(labels: list[int]) -> tuple[int, int]:
    marked = [i for i, lab in enumerate(labels) if lab != -100]
    return marked[0], marked[-1] + 1


def _trl_args(cls, cfg: dict, out: Path, **extra):
    return cls(output_dir=str(out), max_steps=cfg["max_steps"], per_device_train_batch_size=cfg["batch_size"],
               learning_rate=cfg["learning_rate"], lr_scheduler_type=cfg["lr_scheduler"],
               warmup_steps=int(cfg["warmup_ratio"] * cfg["max_steps"]), weight_decay=cfg["weight_decay"],
               max_grad_norm=cfg["max_grad_norm"], logging_steps=1, save_strategy="no", report_to="none",
               use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=cfg["seed"],
               data_seed=cfg["seed"], dataloader_num_workers=0, disable_dropout=True, **extra)


def run_trl(cfg: dict, stage: str) -> dict:
    from accelerate.utils import set_seed
    from datasets import Dataset

    from qihuang.models.prepare import prepare_model

    set_seed(cfg["seed"])
    config, tokenizer, feats = _features(cfg)
    out = Path(cfg["output"])
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = []
        for f in feats:
            (p, q), (pr, qr) = _answer_span(f["chosen_labels"]), _answer_span(f["rejected_labels"])
            assert p == pr and f["chosen_input_ids"][:p] == f["rejected_input_ids"][:p], "prompts differ"
            rows.append({"prompt_ids": f["chosen_input_ids"][:p], "chosen_ids": f["chosen_input_ids"][p:q],
                         "rejected_ids": f["rejected_input_ids"][p:qr]})

        class Pretokenized(DPOTrainer):  # the rows are already qihuang's tokens
            def _prepare_dataset(self, dataset, *a, **k):
                return dataset

        model = prepare_model(config, tokenizer)
        args = _trl_args(DPOConfig, cfg, out, beta=cfg["pref_beta"], precompute_ref_log_probs=True,
                         precompute_ref_batch_size=cfg["batch_size"], loss_type=["sigmoid"], max_length=None)
        trainer = Pretokenized(model=model, args=args, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer)
    else:
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen_ids": f["chosen_input_ids"][:_answer_span(f["chosen_labels"])[1]],
                 "rejected_ids": f["rejected_input_ids"][:_answer_span(f["rejected_labels"])[1]]} for f in feats]
        model = prepare_model(config, tokenizer, head="score")
        tokenizer.pad_token = "<|endoftext|>"  # pad != EOS: TRL's classifier then scores the EOS, like qihuang
        args = _trl_args(RewardConfig, cfg, out, max_length=None, center_rewards_coefficient=None)
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "train_s": result.metrics["train_runtime"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cfg = json.loads(Path(args.result).with_suffix(".cfg.json").read_text(encoding="utf-8"))
    stage, arm = args.arm.split(":")
    res = run_qihuang(cfg) if arm == "qihuang" else run_trl(cfg, stage)
    Path(args.result).write_text(json.dumps(res), encoding="utf-8")


# ---- parent -------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, stage: str, arm: str, cfg: dict, work: Path) -> dict:
    result = work / f"{stage}-{arm}.json"
    result.with_suffix(".cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    cmd = [sys.executable, __file__, "--arm", f"{stage}:{arm}", "--result", str(result), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(work / f"{stage}-{arm}.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{stage}/{arm} failed; see {work / f'{stage}-{arm}.log'}")
    res = json.loads(result.read_text(encoding="utf-8"))
    return {**res, "wall_s": round(time.perf_counter() - start, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "s_per_step": round(res["train_s"] / len(res["losses"]), 4)}


def measure(args: argparse.Namespace, stage: str, model: str, data: Path, work: Path) -> dict:
    """Every arm ``--repeat`` times, alternating the order (load drift hits both); per arm the
    first run's figures with the fastest step time (and every step time) of all its runs."""
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for r in range(args.repeat):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            cfg = train_config(args, stage, model, data, work / f"{stage}-{arm}")
            runs[arm].append(launch(args, stage, arm, cfg, work))
    return {arm: {**rs[0], "s_per_step": min(x["s_per_step"] for x in rs),
                  "s_per_step_runs": [x["s_per_step"] for x in rs]} for arm, rs in runs.items()}


def resolve_model(name: str, work: Path) -> str:
    if name != "tiny":
        return name
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import build_tiny_model

    target = work / "tiny_llama"
    return str(target if (target / "config.json").is_file() else build_tiny_model(target, "llama"))


def compare(stage: str, res: dict, tolerance: float) -> tuple[bool, dict]:
    q, t = res["qihuang"], res["trl"]
    diff = max(abs(a - b) for a, b in zip(q["losses"], t["losses"], strict=True))
    ok = diff <= tolerance and q["trainable_params"] == t["trainable_params"]
    print(f"\n{stage}: {'step':>4} {'qihuang loss':>13} {'TRL loss':>10}")
    for i, (a, b) in enumerate(zip(q["losses"], t["losses"]), 1):
        print(f"{'':>{len(stage) + 1}} {i:>4} {a:>13.6f} {b:>10.6f}")
    for key in ("s_per_step", "wall_s", "peak_rss_mb", "trainable_params"):
        print(f"  {key:<17} qihuang {q[key]:>10}   TRL {t[key]:>10}")
    if len(q["s_per_step_runs"]) > 1:
        print(f"  s_per_step, every run: qihuang {q['s_per_step_runs']}   TRL {t['s_per_step_runs']}")
    print(f"  speed (TRL s/step / qihuang s/step): {t['s_per_step'] / q['s_per_step']:.2f}x")
    print(f"  losses agree within {tolerance} (max |diff| {diff:.2e}), same trainable parameters: "
          f"{'OK' if ok else 'MISSED'}")
    return ok, {"max_loss_diff": diff, "trl_over_qihuang_step_time": t["s_per_step"] / q["s_per_step"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arm:
        child(args)
        return 0
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("trl", "datasets")):
        print("the TRL arm needs trl and datasets (not qihuang dependencies): "
              "pip install -c constraints.txt -e '.[trl-compare]'", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT / "src"))
    from qihuang.fileio import atomic_write_json

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, data = resolve_model(args.model, work), write_pairs(work / "pairs", args.pairs)
    print(f"model {args.model}, {args.pairs} pairs = batch, {args.steps} steps, lr {args.lr}, threads {args.threads}, "
          f"repeat {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    summary, all_ok = {"args": vars(args), "load_before": os.getloadavg()}, True
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        res = measure(args, stage, model, data, work)
        ok, figures = compare(stage, res, args.tolerance)
        summary[stage] = {**res, **figures, "ok": ok}
        all_ok &= ok
    summary["load_after"] = os.getloadavg()
    print(f"\nload average after: {summary['load_after']}")
    atomic_write_json(work / "summary.json", summary)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
