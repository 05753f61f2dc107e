"""Retrieval on real questions: the real-question scorer's figures on both splits and on the team's regression questions.

Runs the ``retrieval`` eval task (``qihuang eval --task retrieval``; its ``link_*`` and ``department_hit3``
scores are the real-question scorer's definitions, see ``qihuang.eval.tasks.retrieval``) on

- a real-question file in the labelled shape (``text``, ``entities``, ``also_ok``, ``attributes``,
  ``department_gold``, ``split`` tune/held, ``confidence``): ``tune`` and ``held``, high confidence and all;
- the team's own regression questions (tests/fixtures/retrieval_dev_link.jsonl): written by the team, so
  they share its phrasing; shown beside the real ones, never a target;

prints one table (with the CPU flags and load average of the machine) and exits 1 when a target on
``held`` / high confidence is missed:

    entity recall >= 95, fact precision >= 90, attribute F1 >= 90, abstain >= 90, department hit@3 >= 80

    QIHUANG_HOME=/work/qh python benchmarks/realq_retrieval.py --questions ../shared/realq/questions.jsonl [--kb KB]
        [--categories]   # also the misses of each split counted by kind (no question text is printed)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_bench import cpu_flags  # noqa: E402  (the SIMD flags that matter for speed figures)

REGRESSION = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "retrieval_dev_link.jsonl"
TARGETS = {"link_entity_recall": 95.0, "link_fact_precision": 90.0, "link_attr_f1": 90.0, "link_abstain": 90.0,
           "department_hit3": 80.0}
COLUMNS = (("n", "n"), ("entity recall", "link_entity_recall"), ("fact precision", "link_fact_precision"),
           ("attribute F1", "link_attr_f1"), ("abstain", "link_abstain"), ("dept hit@3", "department_hit3"))
COUNTS = {"link_entity_recall": "n_link_entities", "link_abstain": "n_link_abstain",
          "department_hit3": "n_departments"}
TARGET_ROW = "held / high"


def scores(kb, path: Path, **options) -> dict:
    """The retrieval task's scores on ``path`` (task options: split, confidence)."""
    from qihuang.eval.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        return run("retrieval", path, out_dir=Path(tmp), kb=kb, batch_size=64, progress=False, **options)["scores"]


def ranking_alone(kb, path: Path, split: str) -> tuple[int, int]:
    """(hits, questions) of department hit@3 when the gold entities stand for what the linker found: how
    well the departments are ranked, whatever the linking (``department_rank.rank`` and the task's
    ``same_department``; gold names with departments of their own count as named, the others as described)."""
    import json

    from qihuang.eval.tasks.retrieval import parse_record, same_department
    from qihuang.kb.department_rank import rank
    from qihuang.kb.departments import patient_groups

    index = kb.departments
    hits = n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else None
        if not row or row.get("split") != split or not row.get("department_gold"):
            continue
        gold = parse_record(row)
        named = [e for e in gold["entities"] if index.own(e)[1]]
        described = [e for e in gold["entities"] if e not in named or index.described(e)]
        ranked = [r.name for r in rank(index, named, described, [], patient_groups(gold["question"]),
                                       gold["question"])][:3]
        n += 1
        hits += any(same_department(d, g) for d in ranked for g in gold["department_gold"])
    return hits, n


def failure_categories(kb, path: Path, split: str) -> dict[str, int]:
    """What the misses of ``split`` (all confidences) are, counted by kind, read off the labels and the link
    result (no text is printed): for the closing notes' "categories that still fail"."""
    import json
    from collections import Counter

    from qihuang.eval.tasks.retrieval import same_department

    out: Counter = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line) if line.strip() else None
        if not row or row.get("split") != split:
            continue
        res = kb.link(row["text"])
        names = {m.name for m in res.entities}
        gold = set(row.get("entities") or [])
        ok = gold | set(row.get("also_ok") or [])
        if gold and not ok & (names | {f.entity for f in res.facts}):
            surfaces = [s for s in row.get("surface") or [] if s]
            if not names:
                out["entity: nothing linked"] += 1
            elif any(n in s and n not in ok for n in names for s in surfaces):
                out["entity: a shorter name inside the written one linked (generic head)"] += 1
            else:
                out["entity: another entity linked"] += 1
            out["entity: gold written as the KB names it" if any(g in row["text"] for g in gold)
                else "entity: gold written otherwise (lay word, variant, description)"] += 1
        if not gold and res.facts:
            out["abstain: facts for a question naming nothing the KB has"] += 1
        if gold:
            asked = {a for a in row.get("attributes") or [] if a != "none"}
            got = set(res.attributes or [])
            for a in sorted(asked - got):
                out[f"attribute missed: {a}"] += 1
            for a in sorted(got - asked):
                out[f"attribute extra: {a}"] += 1
        if row.get("department_gold"):
            deps = list(dict.fromkeys(f.value for f in res.facts if f.attribute == "department"))[:3]
            if not deps:
                out["department: none named"] += 1
            elif not any(same_department(d, g) for d in deps for g in row["department_gold"]):
                out["department: named, none right"] += 1
    return dict(out)


def _cell(s: dict, key: str) -> str:
    value = s.get(key)
    if key == "n":
        return str(value)
    text = "-" if value is None else f"{value:.2f}"  # the task rounds to 2 decimals: no second rounding
    return f"{text} ({s[COUNTS[key]]})" if key in COUNTS else text


def table(rows: dict[str, dict]) -> str:
    widths = [max(len(title), 12) for title, _k in COLUMNS]
    lines = ["  " + "questions".ljust(22) + "".join(t.rjust(w + 2) for (t, _k), w in zip(COLUMNS, widths))]
    for name, s in rows.items():
        lines.append("  " + name.ljust(22) + "".join(_cell(s, k).rjust(w + 2) for (_t, k), w in zip(COLUMNS, widths)))
    return "\n".join(lines)


def missed(s: dict) -> list[str]:
    """The targets a row misses (a figure with nothing to count is missed too)."""
    return [f"{key} {s.get(key)} < {target}" for key, target in TARGETS.items()
            if s.get(key) is None or s[key] < target]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=Path, required=True, help="real questions in the labelled shape (JSON lines)")
    p.add_argument("--kb", type=Path, help="KB file (default: $QIHUANG_HOME/kb.sqlite)")
    p.add_argument("--regression", type=Path, default=REGRESSION, help="the team's regression questions")
    p.add_argument("--categories", action="store_true", help="also count the misses of each split by kind")
    args = p.parse_args(argv)
    from qihuang.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb)
    print(f"cpu: {cpu_flags()}; {os.cpu_count()} CPUs; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    rows = {f"{split} / {conf}": scores(kb, args.questions, split=split, confidence=conf)
            for split in ("tune", "held") for conf in ("high", "all")}
    rows["regression (team's)"] = scores(kb, args.regression)
    print(table(rows))
    for split in ("tune", "held"):
        hits, n = ranking_alone(kb, args.questions, split)
        print(f"  department hit@3 with the gold entities in place of the linked ones ({split}, all): "
              f"{100 * hits / max(n, 1):.2f} % of {n}")
    if args.categories:
        for split in ("tune", "held"):
            cats = failure_categories(kb, args.questions, split)
            print(f"  misses by kind ({split}, all):")
            for key in sorted(cats, key=lambda k: (k.split(":")[0], -cats[k], k)):
                print(f"    {cats[key]:4d}  {key}")
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    misses = missed(rows[TARGET_ROW])
    for line in misses:
        print(f"MISSED ({TARGET_ROW}): {line}")
    if not misses:
        print(f"all {TARGET_ROW} targets met")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
