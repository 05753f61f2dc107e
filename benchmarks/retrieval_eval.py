"""Retrieval evaluation on the labelled question set (benchmarks/retrieval/questions.jsonl) against CMeKG.

Runs the ``retrieval`` eval task (``qihuang eval --task retrieval``) on the real KB, prints the scores
overall, per split and per kind, and exits 1 when a Done-when target of issue 13 is missed:

    entity_acc1 >= 95, attr_f1 >= 90, abstain_recall >= 90, citation_precision >= 90

(throughput is printed too, but not a target here: on shared cores it varies run to run; kb_bench measures it).

    QIHUANG_HOME=/work/qh python benchmarks/retrieval_eval.py [--split all|dev|heldout] [--out DIR]
    QIHUANG_HOME=/work/qh python benchmarks/retrieval_eval.py --check     # labels against the KB only

``--check`` verifies the labels by reading the KB's tables, never the linker
(``qihuang.eval.tasks.retrieval.label_problems``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "retrieval" / "questions.jsonl"
TARGETS = {"entity_acc1": 95.0, "attr_f1": 90.0, "abstain_recall": 90.0, "citation_precision": 90.0}
COLUMNS = ("n", "entity_acc1", "entity_recall3", "attr_precision", "attr_recall", "attr_f1", "fact_recall",
           "citation_precision", "abstain_recall", "abstain_precision", "negated_hit_rate", "questions_per_s")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check(path: Path, db: Path) -> int:
    """Print every label problem of the set (see ``label_problems``); 1 when there is one."""
    from qihuang.eval.tasks.retrieval import label_problems
    from qihuang.kb import KnowledgeBase

    kb = KnowledgeBase.open(db)
    bad = 0
    for rec in _records(path):
        for problem in label_problems(kb, rec):
            bad += 1
            print(f"{rec.get('id')}: {rec['question']}: {problem}")
    print(f"{bad} label problems in {path}")
    return 1 if bad else 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _table(title: str, groups: dict[str, dict]) -> None:
    print(f"\n{title}")
    print("  " + "group".ljust(14) + "".join(c[:10].rjust(11) for c in COLUMNS))
    for name, s in groups.items():
        print("  " + name.ljust(14) + "".join(_fmt(s.get(c)).rjust(11) for c in COLUMNS))


def run(path: Path, db: Path | None, split: str, out: Path) -> int:
    from qihuang.eval.runner import run as eval_run
    from qihuang.kb import KnowledgeBase

    kb = KnowledgeBase.open(db)
    results = eval_run("retrieval", path, out_dir=out, kb=kb, batch_size=64, progress=False, split=split)
    scores, details = results["scores"], results["details"]
    _table("overall", {split: scores})
    _table("per split", details["by_split"])
    _table("per kind", details["by_kind"])
    missed = [f"{k} {scores.get(k)} < {v}" for k, v in TARGETS.items() if (scores.get(k) or 0.0) < v]
    print(f"\nwrote {out / 'results.json'} and {out / 'predictions.jsonl'}")
    for line in missed:
        print(f"MISSED: {line}")
    if not missed:
        print("all targets met")
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="labelled questions (JSON lines)")
    p.add_argument("--kb", type=Path, help="KB file (default: $QIHUANG_HOME/kb.sqlite)")
    p.add_argument("--split", default="all", choices=["all", "dev", "heldout"], help="questions scored")
    p.add_argument("--out", type=Path, help="run directory (default: a temporary one)")
    p.add_argument("--check", action="store_true", help="only check the labels against the KB")
    args = p.parse_args(argv)
    from qihuang.paths import default_db

    db = args.kb or default_db()
    if args.check:
        return check(args.data, db)
    if args.out:
        return run(args.data, db, args.split, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        return run(args.data, db, args.split, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
