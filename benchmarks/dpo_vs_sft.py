"""Does DPO on KB-derived preference pairs reduce hallucination? SFT vs SFT+DPO on the same data.

Builds single-attribute instruction data from the knowledge base (``data build --balanced``),
preference pairs from *the same questions* (``data prefs --dataset``: no question or fact the SFT
run did not see), trains LoRA SFT on the default model, then DPO from that SFT adapter, and
evaluates both with the ``kbqa`` task on the held-out test entities through the same Answerer
the CLI uses. ``--equal-steps`` adds a third arm, SFT trained for as many steps as SFT + DPO
together, to separate the effect of the preference objective from that of extra training.

    python benchmarks/dpo_vs_sft.py --work /tmp/dpo_bench            # a few minutes per stage on CPU
    python benchmarks/dpo_vs_sft.py --work /tmp/dpo_bench --equal-steps

``unsupported_rate`` is computed here from the kbqa predictions: kbqa counts as hallucinated any KB
entity outside the question and the record's own (at most 8) knowledge values, so a true fact of
the asked entity read from the grounding block counts too; ``unsupported_rate`` is the share of
answers naming a KB entity that is no value of *any* KB fact of the asked entity.

Every stage writes into ``--work`` and is skipped when its output exists (delete it to redo).
Prints a table and writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HEADLINE = ("hallucination_rate", "unsupported_rate", "hallucinated_entities_mean", "fact_recall", "qizhen_any",
            "qizhen_half", "rougeL")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", default="bench_out/dpo_vs_sft", help="working directory (data, runs, results)")
    p.add_argument("--db", help="knowledge base (default: $QIHUANG_HOME/kb.sqlite, CMeKG imported if missing)")
    p.add_argument("--model", default="default", help="base model")
    p.add_argument("--max-examples", type=int, default=1500, help="SFT examples built (all splits)")
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--dpo-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sft-lr", type=float, default=1e-3)
    p.add_argument("--dpo-lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--kinds", default="swap,omission,unsafe", help="corruption kinds of the pairs")
    p.add_argument("--cutoff-len", type=int, default=320)
    p.add_argument("--grounded", action=argparse.BooleanOptionalAction, default=True,
                   help="train and answer with KB facts in the prompt (the Answerer's default)")
    p.add_argument("--eval-limit", type=int, default=60, help="test questions evaluated per arm")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    p.add_argument("--equal-steps", action="store_true", help="add SFT trained for sft+dpo steps")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def open_kb(db: str | None):
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    path = Path(db) if db else default_db()
    if path.is_file():
        return KnowledgeBase.open(path)
    kb = KnowledgeBase.create(path)
    kb.import_source("cmekg")
    return kb


def build_data(kb, work: Path, args) -> tuple[Path, Path]:
    from qihuang.datagen import build_dataset
    from qihuang.datagen.preferences import build_prefs

    sft_data, pref_data = work / "sft_data", work / "pref_data"
    if not (sft_data / "stats.json").is_file():
        build_dataset(kb, sft_data, max_examples=args.max_examples, balanced=True, kinds=("single",),
                      seed=args.seed, progress=True)
    if not (pref_data / "stats.json").is_file():
        build_prefs(kb, pref_data, dataset=sft_data, kinds=args.kinds.split(","), seed=args.seed, progress=True)
    return sft_data, pref_data


def train(stage: str, model: str, dataset: Path, out: Path, steps: int, lr: float, args) -> dict:
    from qihuang.train import run

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    # the same questions for every stage: the first steps x batch of the training split (the pairs keep
    # the order of the SFT data they were built from, so DPO's questions are among SFT's)
    config = {"stage": stage, "model": model, "dataset": str(dataset), "output": str(out), "max_steps": steps,
              "max_samples": steps * args.batch_size, "batch_size": args.batch_size, "learning_rate": lr,
              "cutoff_len": args.cutoff_len, "grounded": args.grounded, "seed": args.seed,
              "save_steps": max(10, steps // 2), "eval_steps": steps, "eval_at_start": False, "logging_steps": 5,
              "eval_batch_size": 8, "resume": out.is_dir(), "pref_beta": args.beta, "num_threads": args.threads}
    return run(config).metrics


def evaluate(kb, adapter: Path, test: Path, out: Path, args) -> dict:
    import qihuang.eval as ev
    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    engine = load_engine(model=args.model, adapter=str(adapter), batch_size=8)
    answerer = Answerer(engine, kb, grounded=args.grounded, params=GenerationParams(max_new_tokens=args.max_new_tokens))
    return ev.run("kbqa", test, out_dir=out, answerer=answerer, kb=kb, limit=args.eval_limit, batch_size=8,
                  label=out.name)


def unsupported_rate(kb, predictions: Path, test: Path) -> float:
    """Share (%) of answers naming a KB entity unsupported by every fact of the asked entity."""
    from qihuang.eval.metrics import norm

    entity_of = {}
    for line in test.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        entity_of[rec["id"]] = rec["entity"]
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    bad = 0
    for row in rows:
        entity = kb.show(entity_of[row["id"]])
        support = [norm(v) for v in [entity.name, *entity.aliases, *(f.value for f in entity.facts)] if norm(v)]
        joined = "\x1f".join(support)
        unsupported = [h for h in row.get("hallucinated", []) if norm(h) not in joined
                       and not any(len(v) > 1 and v in norm(h) for v in support)]
        bad += bool(unsupported)
    return round(100 * bad / max(1, len(rows)), 2)


def table(rows: dict[str, dict]) -> str:
    head = f"| arm | train steps | train s | {' | '.join(HEADLINE)} |"
    lines = [head, "|" + "---|" * (3 + len(HEADLINE))]
    for arm, row in rows.items():
        scores = row["scores"]
        cells = [str(scores.get(k, "-")) for k in HEADLINE]
        lines.append(f"| {arm} | {row['steps']} | {row['train_s']:.0f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    kb = open_kb(args.db)
    sft_data, pref_data = build_data(kb, work, args)
    arms: dict[str, tuple[Path, list[dict]]] = {}
    sft = train("sft", args.model, sft_data, work / "sft", args.sft_steps, args.sft_lr, args)
    arms["SFT"] = (work / "sft", [sft])
    dpo = train("dpo", str(work / "sft"), pref_data, work / "sft_dpo", args.dpo_steps, args.dpo_lr, args)
    arms["SFT+DPO"] = (work / "sft_dpo", [sft, dpo])
    if args.equal_steps:
        longer = train("sft", args.model, sft_data, work / "sft_long", args.sft_steps + args.dpo_steps, args.sft_lr,
                       args)
        arms["SFT (same steps)"] = (work / "sft_long", [longer])
    rows = {}
    for arm, (out, metrics) in arms.items():
        results = evaluate(kb, out, sft_data / "test.jsonl", work / f"eval_{out.name}", args)
        results["scores"]["unsupported_rate"] = unsupported_rate(kb, work / f"eval_{out.name}" / "predictions.jsonl",
                                                                 sft_data / "test.jsonl")
        rows[arm] = {"scores": results["scores"], "steps": sum(m["steps"] for m in metrics),
                     "train_s": sum(m["train_time_s"] for m in metrics), "n": results["data"]["n_evaluated"]}
    prefs = json.loads((pref_data / "stats.json").read_text(encoding="utf-8"))
    summary = {"rows": rows, "dpo": {k: dpo.get(k) for k in ("dev_reward_accuracy", "dev_reward_margin",
                                                            "dev_reward_accuracy_initial", "dev_loss_initial",
                                                            "dev_loss", "num_train_pairs")},
               "pairs": {"splits": prefs["splits"], "corruptions": prefs["corruptions"]},
               "options": vars(args), "seconds": round(time.perf_counter() - t0, 1)}
    (work / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    print(table(rows))
    print(f"DPO dev pairs: reward accuracy {dpo.get('dev_reward_accuracy')}, margin {dpo.get('dev_reward_margin')}; "
          f"{rows['SFT']['n']} test questions, grounded={args.grounded}")
    kb.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
