"""``qihuang quickstart``: the main job, end to end, on the embedded default model and KB.

1. import the knowledge base (CMeKG);
2. build a small balanced instruction set (knowledge-tuning format, entity-disjoint test split);
3. evaluate the untuned model on the held-out KB-QA questions, ungrounded and grounded;
4. LoRA-tune the model (grounded SFT) within a bounded budget;
5. evaluate the tuned model the same way;
6. print the before/after table, write ``report.md`` + ``compare.png`` with sample answers.

Every step is cached in ``OUT/state.json``: a rerun skips finished steps, ``--fresh`` redoes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qihuang.options import BuildOptions, QuickstartOptions
from qihuang.quickstart_cache import StepRunner
RUNS = ("base_plain", "base_grounded", "tuned_plain", "tuned_grounded")
TABLE_METRICS = ("fact_recall", "qizhen_any", "qizhen_half", "qizhen_two_thirds", "hallucination_rate",
                 "wrong_attribute_rate", "draft_hallucination_rate", "draft_wrong_attribute_rate",
                 "hallucinated_entities_mean", "abstained_rate", "bleu4", "rougeL")


def _import_kb(cfg: QuickstartOptions) -> dict:
    from qihuang.kb import KnowledgeBase

    with KnowledgeBase.create(cfg.db) as kb:
        stats = kb.stats()
        if stats["triples"] == 0:
            report = kb.import_source(cfg.source)
            stats = kb.stats()
            print(f"imported {report.triples_in_source} triples in {report.seconds} s")
        else:
            print(f"using the existing knowledge base {stats['path']}")
    return {"path": stats["path"], "entities": stats["entities"], "triples": stats["triples"]}


def _build_data(cfg: QuickstartOptions, db: str, data_dir: Path) -> dict:
    from qihuang.datagen.builder import build_dataset

    if data_dir.exists():
        shutil.rmtree(data_dir)
    total = cfg.examples + 2 * cfg.test_questions
    options = BuildOptions(max_examples=total, attributes=cfg.attributes, seed=cfg.seed, balanced=True,
                           kinds=["single", "scenario", "dialogue"], phrasings=1, dev_ratio=0.04,
                           test_ratio=max(0.02, cfg.test_questions / max(total, 1) * 1.5))
    stats = build_dataset(db, data_dir, **options.builder_kwargs(), progress=True)
    _trim_test(data_dir / "test.jsonl", cfg.test_questions, cfg.seed)
    return {"dir": str(data_dir), "splits": stats.get("splits"), "kinds": stats.get("kinds")}


def _trim_test(path: Path, n: int, seed: int) -> None:
    """Keep ``n`` single-attribute test questions, spread over attributes (the KB-QA held-out set)."""
    import random

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(rows)
    by_attr: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("kind") == "single":
            by_attr.setdefault(row["attribute"], []).append(row)
    picked: list[dict] = []
    while len(picked) < n and any(by_attr.values()):
        for attr in sorted(by_attr):
            if by_attr[attr] and len(picked) < n:
                picked.append(by_attr[attr].pop())
    from qihuang.fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked))


def _train(cfg: QuickstartOptions, data_dir: Path, adapter_dir: Path) -> dict:
    from qihuang.train import run

    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    config = {
        "stage": "sft", "model": cfg.model, "dataset": str(data_dir), "finetuning": "lora", "grounded": True,
        "lora_rank": cfg.lora_rank, "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size,
        "cutoff_len": cfg.cutoff_len, "num_epochs": 1.0, "max_steps": cfg.max_steps, "seed": cfg.seed,
        "max_minutes": None if cfg.max_steps else cfg.max_minutes, "output": str(adapter_dir),
        "save_steps": 25, "logging_steps": 5, "warmup_ratio": 0.05,
        # one dev pass, at the end: the untuned figures come from step 3, and a pass inside the
        # budget would take training time (each is ~20 s on 2 cores)
        "eval_at_start": False, "eval_steps": 10 ** 6,
    }
    result = run(config)
    keep = ("steps", "train_loss", "dev_loss", "tokens", "train_time_s", "tokens_per_s")
    return {"dir": str(adapter_dir), **{k: result.metrics.get(k) for k in keep}}


def _evaluate(cfg: QuickstartOptions, name: str, db: str, data_dir: Path, adapter: str | None, out: Path) -> dict:
    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine
    from qihuang.eval import run
    from qihuang.kb import KnowledgeBase

    engine = load_engine(cfg.model if adapter is None else None, adapter=adapter)
    kb = KnowledgeBase.open(db)
    results = {}
    for grounded in (False, True):
        label = f"{name}_{'grounded' if grounded else 'plain'}"
        answerer = Answerer(engine, kb, grounded=grounded,
                            params=GenerationParams(max_new_tokens=cfg.max_new_tokens))
        res = run("kbqa", data_dir / "test.jsonl", answerer=answerer, kb=kb, out_dir=out / label,
                  batch_size=cfg.eval_batch_size, grounded=grounded, label=label, resume=True)
        results[label] = {m: res["scores"].get(m) for m in TABLE_METRICS}
    kb.close()
    return results


def run_quickstart(cfg: QuickstartOptions, console: Console | None = None) -> dict:
    """Run (or resume) the main job; returns the before/after scores."""
    console = console or Console()
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    steps = StepRunner(out, fresh=cfg.fresh, console=console)
    data_dir, adapter_dir, eval_dir = out / "data", out / "adapter", out / "eval"
    opts = cfg.model_dump(exclude={"fresh"})
    opts |= {"steps": cfg.max_steps, "budget_minutes": cfg.max_minutes}  # the names earlier state.json files use

    kb = steps.run("kb", "1/6 import the knowledge base", {"source": cfg.source, "db": cfg.db},
                   lambda: _import_kb(cfg))
    data_key = {k: opts[k] for k in ("examples", "test_questions", "attributes", "seed")} | {"kb": kb}
    steps.run("data", "2/6 build instruction data (knowledge-tuning format, entity-disjoint test split)",
              data_key, lambda: _build_data(cfg, kb["path"], data_dir))
    eval_key = data_key | {k: opts[k] for k in ("model", "max_new_tokens")}
    base = steps.run("eval_base", "3/6 evaluate the untuned model (ungrounded and grounded)", eval_key,
                     lambda: _evaluate(cfg, "base", kb["path"], data_dir, None, eval_dir))
    train_key = data_key | {k: opts[k] for k in ("model", "steps", "budget_minutes", "learning_rate",
                                                  "lora_rank", "batch_size", "cutoff_len")}
    trained = steps.run("train", "4/6 LoRA-tune the model on CPU (grounded SFT)", train_key,
                        lambda: _train(cfg, data_dir, adapter_dir))
    tuned = steps.run("eval_tuned", "5/6 evaluate the tuned model the same way", eval_key | train_key,
                      lambda: _evaluate(cfg, "tuned", kb["path"], data_dir, trained["dir"], eval_dir))
    scores = {**base, **tuned}
    steps.run("report", "6/6 write the report", {"scores": scores},
              lambda: write_report(out, scores, trained, eval_dir, console))
    _print_table(scores, console)
    console.print("Where the time went: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in
                                                      steps.timings.items()) + " (0 s: done earlier)")
    _print_next(out, trained["dir"], console)
    return {"scores": scores, "train": trained, "report": str(out / "report.md")}


def _print_table(scores: dict, console: Console) -> None:
    table = Table(title="held-out KB-QA: before vs after tuning")
    table.add_column("metric")
    for run in RUNS:
        table.add_column(run, justify="right")
    for metric in TABLE_METRICS:
        table.add_row(metric, *(_fmt(scores.get(run, {}).get(metric)) for run in RUNS))
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _next_commands(out: Path, adapter: str) -> list[str]:
    return [f"qihuang chat --adapter {adapter}", f"qihuang serve --adapter {adapter} --port 8000",
            f"qihuang webui --adapter {adapter}", f"qihuang export --adapter {adapter} --out {out / 'merged'}"]


def _print_next(out: Path, adapter: str, console: Console) -> None:
    console.print(f"\nReport: {out / 'report.md'} (chart: {out / 'compare.png'})")
    console.print("Next:")
    for command in _next_commands(out, adapter):
        console.print(f"  {command}", soft_wrap=True)


def write_report(out: Path, scores: dict, trained: dict, eval_dir: Path, console: Console) -> dict:
    """``report.md`` (table, training figures, three sample answers with citations) + ``compare.png``."""
    from qihuang.eval import compare
    from qihuang.fileio import atomic_write_text

    table = compare([eval_dir / r for r in RUNS], out_png=out / "compare.png", metrics=list(TABLE_METRICS))
    lines = ["# qihuang quickstart report", "",
             "Held-out KB-QA questions (entities never seen in training). Rates and scores are in %.", "",
             table.to_markdown(), "", "![before vs after](compare.png)", "", "## Training", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in trained.items() if k != "dir"]
    lines += [f"- adapter: `{trained['dir']}` (loss curves: `{Path(trained['dir']) / 'loss.png'}`)", "",
              "## Sample answers (tuned, grounded)", ""]
    lines += _samples(eval_dir / "tuned_grounded" / "predictions.jsonl", eval_dir / "base_grounded" / "predictions.jsonl")
    lines += ["## Next", "", "```bash", *_next_commands(out, trained["dir"]), "```"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return {"report": str(out / "report.md"), "png": str(out / "compare.png")}


def _samples(tuned: Path, base: Path, n: int = 3) -> list[str]:
    rows = [json.loads(x) for x in tuned.read_text(encoding="utf-8").splitlines() if x.strip()]
    before = {r.get("id"): r for r in (json.loads(x) for x in base.read_text(encoding="utf-8").splitlines() if x.strip())}
    rows.sort(key=lambda r: -(r.get("fact_recall") or 0))
    out = []
    for row in rows[:n]:
        cites = "; ".join(f"{c['entity']}·{c.get('relation') or c.get('attribute')}: {'、'.join(c['values'][:6])}"
                          for c in row.get("citations") or [])
        out += [f"**Q:** {row.get('question')}", "",
                f"- untuned: {(before.get(row.get('id')) or {}).get('prediction', '-')}",
                f"- tuned: {row.get('prediction')}", f"- citations: {cites or '-'}",
                f"- reference: {row.get('reference')}", ""]
    return out


def cmd_quickstart(args) -> int:
    from qihuang.flags import options_from_args

    run_quickstart(options_from_args(QuickstartOptions, args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from qihuang.flags import add_options

    p = sub.add_parser("quickstart", help="the main job: import KB, build data, evaluate, LoRA-tune, evaluate, report")
    add_options(p, QuickstartOptions)
    p.set_defaults(func=cmd_quickstart)
