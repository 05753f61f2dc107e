"""Triage figures on the hand-written question set, per split; exits 1 when a target is missed.

    PYTHONPATH=src python benchmarks/triage_eval.py [--data benchmarks/triage/questions.jsonl]

Targets (issue 17): 0 red flags missed and at most 5% false alarms, on every split (dev and the
held-out part never used to tune the rules). Also prints the throughput of ``triage()``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qihuang.answer.triage import triage
from qihuang.eval.base import RunContext
from qihuang.eval.tasks.triage import TriageTask

HERE = Path(__file__).parent
MAX_FALSE_ALARM_RATE = 5.0


def _throughput(examples, repeat: int) -> float:
    triage("热身")  # rules are compiled once, on first use
    t0 = time.perf_counter()
    for _ in range(repeat):
        for ex in examples:
            triage(ex.question, history=ex.fields["turns"])
    return repeat * len(examples) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE / "triage" / "questions.jsonl"))
    ap.add_argument("--repeat", type=int, default=5, help="passes over the set for the throughput figure")
    args = ap.parse_args(argv)
    task = TriageTask()
    examples = task.load(Path(args.data)).examples
    rows = task.predict(examples, RunContext())
    agg = task.aggregate(rows)
    by_split = agg["details"]["by_split"] or {"all": agg["scores"]}
    failed = []
    print(f"{'split':8s} {'red flags':>9s} {'missed':>6s} {'recall%':>8s} {'benign':>6s} {'alarms':>6s} {'alarm%':>7s}")
    for name, s in [*by_split.items(), ("all", agg["scores"])]:
        print(f"{name:8s} {s['n_red_flags']:9d} {s['missed']:6d} {s['recall']:8.2f} {s['n_benign']:6d} "
              f"{s['false_alarms']:6d} {s['false_alarm_rate']:7.2f}")
        if s["missed"] or s["false_alarm_rate"] > MAX_FALSE_ALARM_RATE:
            failed.append(name)
    for r in agg["details"]["missed"]:
        print(f"  MISSED      {r['id']}: {r['question']} (label {r['label']}, got {r['level']})")
    for r in agg["details"]["false_alarms"]:
        print(f"  FALSE ALARM {r['id']}: {r['question']} ({r['level']}: {', '.join(r['matched'])})")
    print(f"throughput: {_throughput(examples, args.repeat):,.0f} questions/s (single thread)")
    if failed:
        print(f"MISSED TARGET (0 missed, <= {MAX_FALSE_ALARM_RATE}% false alarms) on: {', '.join(failed)}")
        return 1
    print("targets met on every split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
