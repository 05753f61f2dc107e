"""Verifier check on the real KB, no model: false alarms on correct answers, catches on wrong ones.

    python benchmarks/verify_references.py [--db $QIHUANG_HOME/kb.sqlite] [--seeds 29,31] [--n 300]

For each seed, ``qihuang data build --balanced`` makes a test split; ``eval --task kbqa`` scores

* the reference answers themselves (correct by construction): every hallucination / wrong-attribute
  flag is a false alarm of the verifier (printed);
* adversarial rewrites of the drug-indication questions: ``X的适应症包括<two of X's adverse
  reactions>`` (must be wrong_attribute) and ``X主要用于<an indication of another drug that X does
  not have>`` (must be unsupported).

Exit status 1 when a false-alarm rate is over 1% or an adversarial answer is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_engine import FakeAnswerer, ScriptedEngine  # noqa: E402  (scripted answers, no model)


def _run(kb, rows: list[dict], answers: list[str], out: Path) -> list[dict]:
    import qihuang.eval as ev

    out.mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    by_prompt = {"\n".join([*(f"{a}\n{b}" for a, b in r["history"]), r["instruction"]]): a
                 for r, a in zip(rows, answers, strict=True)}
    ev.run("kbqa", path, answerer=FakeAnswerer(ScriptedEngine(replies=lambda q: by_prompt[q]), kb), kb=kb,
           out_dir=out / "run", progress=False, resume=False)
    return [json.loads(x) for x in (out / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def _adversarial(kb, records: list[dict]) -> tuple[list[dict], list[str], list[str]]:
    seen, drugs = set(), []
    for r in records:
        if r.get("attribute") == "indications" and r.get("kind") == "single" and r["entity"] not in seen:
            seen.add(r["entity"])
            drugs.append(r)
    rows, answers, kinds = [], [], []
    for i, r in enumerate(drugs):
        ent = kb.show(r["entity"])
        own, ind = {f.value for f in ent.facts}, set(ent.values("indications"))
        adverse = [v for v in ent.values("adverse_reactions") if v not in ind and 2 <= len(v) <= 8][:2]
        if adverse:
            rows.append(r)
            answers.append(f"{r['entity']}的适应症包括{'、'.join(adverse)}。")
            kinds.append("wrong_attribute")
        for other in drugs[i + 1:] + drugs[:i]:
            foreign = [v for v in kb.show(other["entity"]).values("indications") if 2 <= len(v) <= 8
                       and not any(v in o for o in own) and v not in r["entity"]
                       and any(m.surface == v for m in kb.find_entities(v))]
            if foreign:
                rows.append({**r, "instruction": "请问" + r["instruction"]})
                answers.append(f"{r['entity']}主要用于{foreign[0]}。")
                kinds.append("hallucinated")
                break
    return rows, answers, kinds


def check_seed(kb, db: str, seed: int, n: int, tmp: Path) -> dict:
    from qihuang.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        main(["data", "build", "--db", db, "--out", str(tmp / "ds"), "--balanced", "--max-examples", "6000",
              "--json", "--seed", str(seed)])
    records = [json.loads(x) for x in (tmp / "ds" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(seed).shuffle(records)
    records = records[:n]
    refs = _run(kb, records, [r["output"] for r in records], tmp / "refs")
    false = [r for r in refs if r.get("hallucinated") or r.get("wrong_attribute")]
    for r in false:
        print(f"  false alarm [{r.get('subject')}] {r['prediction'][:100]} {r['hallucinated']} {r['wrong_attribute']}")
    rows, answers, kinds = _adversarial(kb, records)
    adv = _run(kb, rows, answers, tmp / "adv") if rows else []
    missed = [(row, k) for row, k in zip(adv, kinds, strict=True) if not row.get(k)]
    for row, k in missed:
        print(f"  missed ({k}) {row['prediction']}")
    return {"references": len(refs), "false_hallucination": sum(bool(r.get("hallucinated")) for r in refs),
            "false_wrong_attribute": sum(bool(r.get("wrong_attribute")) for r in refs),
            "adversarial": len(adv), "missed": len(missed),
            "wrong_attribute_cases": kinds.count("wrong_attribute"), "hallucinated_cases": kinds.count("hallucinated")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=None, help="knowledge base (default: $QIHUANG_HOME/kb.sqlite)")
    ap.add_argument("--seeds", default="29,31", help="data-build seeds (29,31 were never looked at while tuning)")
    ap.add_argument("--n", type=int, default=300, help="reference answers per seed")
    args = ap.parse_args()
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    db = args.db or str(default_db())
    kb = KnowledgeBase.open(db)
    total: dict[str, int] = {}
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            res = check_seed(kb, db, seed, args.n, Path(tmp))
        print(f"seed {seed}: {res}")
        for k, v in res.items():
            total[k] = total.get(k, 0) + v
    n = max(1, total["references"])
    fa_h, fa_w = 100 * total["false_hallucination"] / n, 100 * total["false_wrong_attribute"] / n
    print(f"references: {total['references']} correct answers, false alarms: hallucination {fa_h:.2f}%, "
          f"wrong attribute {fa_w:.2f}% (target <= 1%)")
    print(f"adversarial: {total['adversarial']} wrong answers ({total['wrong_attribute_cases']} adverse reactions "
          f"as indications, {total['hallucinated_cases']} other drugs' indications), missed {total['missed']}")
    ok = fa_h <= 1 and fa_w <= 1 and total["missed"] == 0
    print("OK" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
