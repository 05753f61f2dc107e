"""Triage figures: hand-written sets per split and category, real questions per split; exits 1 on a missed target.

    PYTHONPATH=src python benchmarks/triage_eval.py [--data FILE ...] [--split S]
        [--realq ../shared/realq/questions.jsonl] [--realq-split tune|held|all]

Hand-written sets (default ``benchmarks/triage/questions.jsonl`` and ``context.jsonl``): recall of red flags
and false-alarm rate (anything raised on a ``none`` question) per split and, where rows have a
``category``, per category for the ``tune`` and the never-tuned ``heldout`` split. Target on every split: 0
red flags missed, at most 5% false alarms.

Real questions (``--realq``, labelled ``triage_gold``, splits ``tune`` and ``held``): the share of questions
not labelled ``emergency`` that get ``emergency`` (as ``triage_score.py`` counts it; also the share of those
labelled ``none``), and how many labelled ``emergency`` get it. Target on each split: at most 2% false
emergencies, every emergency caught.

For every set it also prints precision and recall of the level ``emergency`` for the rules alone, the
learned backstop alone and both (the shipped triage), and the throughput of ``triage()``. The backstop is
trained on the tuned parts of the hand-written sets, so its figures there are in-sample: read them on the
``heldout`` split (``--split heldout``) and on the real questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from qihuang.answer.triage import default_rules, triage
from qihuang.eval.base import RunContext
from qihuang.eval.tasks.triage import TriageTask, emergency_figures

HERE = Path(__file__).parent
MAX_FALSE_ALARM_RATE = 5.0
MAX_FALSE_EMERGENCY_RATE = 2.0


def _variants() -> dict:
    """The shipped rules and backstop, and each alone."""
    rules = default_rules()
    return {"rules": replace(rules, backstop=None), "backstop": replace(rules, rules=()), "both": rules}


def _pr_line(name: str, fig: dict) -> str:
    fmt = lambda v: "   -  " if v is None else f"{v:6.2f}"  # noqa: E731
    return (f"  {name:8s} emergency raised {fig['raised']:4d}, labelled {fig['labelled']:4d}, both {fig['both']:4d}: "
            f"precision {fmt(fig['precision'])}%  recall {fmt(fig['recall'])}%")


def _hand_written(path: Path, failed: list[str], split: str | None) -> list:
    task = TriageTask(split=split)
    examples = task.load(path).examples
    agg = task.aggregate(task.predict(examples, RunContext()))
    print(f"\n== {path.name}: {len(examples)} questions")
    by_split = agg["details"]["by_split"] or {"all": agg["scores"]}
    print(f"{'split':10s} {'red flags':>9s} {'missed':>6s} {'recall%':>8s} {'benign':>6s} {'alarms':>6s} "
          f"{'alarm%':>7s}")
    for name, s in [*by_split.items(), ("all", agg["scores"])]:
        print(f"{name:10s} {s['n_red_flags']:9d} {s['missed']:6d} {s['recall'] or 0:8.2f} {s['n_benign']:6d} "
              f"{s['false_alarms']:6d} {s['false_alarm_rate'] or 0:7.2f}")
        if s["missed"] or (s["false_alarm_rate"] or 0) > MAX_FALSE_ALARM_RATE:
            failed.append(f"{path.name}:{name}")
    if agg["details"]["by_category"]:
        _by_category(task, examples)
    for r in agg["details"]["missed"]:
        print(f"  MISSED      {r['id']}: {r['question']} (label {r['label']}, got {r['level']})")
    for r in agg["details"]["false_alarms"]:
        print(f"  FALSE ALARM {r['id']}: {r['question']} ({r['level']}: {', '.join(r['matched'])})")
    print("emergency, by what raises it (all splits):")
    for name, rules in _variants().items():
        pairs = [(ex.fields["label"], triage(ex.question, rules, ex.fields["turns"]).level) for ex in examples]
        print(_pr_line(name, emergency_figures(pairs)))
    return examples


def _by_category(task: TriageTask, examples: list) -> None:
    """Per-category figures of the parts not yet tuned on and of the tune part (numbered held-out parts
    were tuned on after their first look: their figures say little)."""
    splits = sorted({ex.fields["split"] for ex in examples if ex.fields["split"]} & {"tune", "heldout"})
    for split in splits:
        rows = task.predict([ex for ex in examples if ex.fields["split"] == split], RunContext())
        cats = task.aggregate(rows)["details"]["by_category"]
        print(f"  {split}, per category:  red flags missed / n   false alarms / benign")
        for name, s in cats.items():
            red = f"{s['missed']:3d} / {s['n_red_flags']:3d}" if s["n_red_flags"] else "    -    "
            benign = f"{s['false_alarms']:3d} / {s['n_benign']:3d}" if s["n_benign"] else "    -    "
            print(f"    {name:20s} {red}            {benign}")


def _real(path: Path, failed: list[str], splits: tuple[str, ...]) -> None:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(f"\n== real questions ({path}): emergency raised where the label says otherwise, emergencies caught")
    variants = _variants()
    for split in splits:
        part = [r for r in rows if r.get("split") == split]
        if not part:
            continue
        levels = {name: [triage(r["text"], rules).level for r in part] for name, rules in variants.items()}
        gold = [r["triage_gold"] for r in part]
        got = levels["both"]
        other = [g != "emergency" for g in gold]
        false_em = sum(o and lv == "emergency" for o, lv in zip(other, got))
        false_none = sum(g == "none" and lv == "emergency" for g, lv in zip(gold, got))
        caught = sum(g == "emergency" and lv == "emergency" for g, lv in zip(gold, got))
        n_other, n_none, n_em = sum(other), gold.count("none"), gold.count("emergency")
        rate = 100 * false_em / max(n_other, 1)
        print(f"{split}: n={len(part)}  false emergencies {false_em}/{n_other} ({rate:.1f}%; labelled none "
              f"{false_none}/{n_none}, {100 * false_none / max(n_none, 1):.1f}%)  emergencies caught {caught}/{n_em}")
        for name in variants:
            print(_pr_line(name, emergency_figures(list(zip(gold, levels[name])))))
        if rate > MAX_FALSE_EMERGENCY_RATE or caught < n_em:
            failed.append(f"realq:{split}")


def _throughput(examples: list, repeat: int) -> float:
    triage("热身")  # rules are compiled and the backstop trained once, on first use
    t0 = time.perf_counter()
    for _ in range(repeat):
        for ex in examples:
            triage(ex.question, history=ex.fields["turns"])
    return repeat * len(examples) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, nargs="+",
                    default=[HERE / "triage" / "questions.jsonl", HERE / "triage" / "context.jsonl"])
    ap.add_argument("--split", help="keep only this split of the hand-written sets (e.g. tune)")
    ap.add_argument("--realq", type=Path, help="real questions with triage_gold labels (e.g. ../shared/realq)")
    ap.add_argument("--realq-split", choices=("tune", "held", "all"), default="all",
                    help="which split of the real questions (held is for reporting only)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the sets for the throughput figure")
    args = ap.parse_args(argv)
    failed: list[str] = []
    examples = [ex for path in args.data for ex in _hand_written(path, failed, args.split)]
    if args.realq:
        _real(args.realq, failed, ("tune", "held") if args.realq_split == "all" else (args.realq_split,))
    print(f"\nthroughput: {_throughput(examples, args.repeat):,.0f} questions/s (single thread)")
    if failed:
        print(f"MISSED TARGET (hand-written: 0 missed, <= {MAX_FALSE_ALARM_RATE}% false alarms; real: <= "
              f"{MAX_FALSE_EMERGENCY_RATE}% false emergencies, every emergency caught) on: {', '.join(failed)}")
        return 1
    print("targets met everywhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
