"""Wrong-attribute benchmark: held-out drug-indication questions, unseen paraphrases, every policy.

    python benchmarks/wrong_attribute.py --adapter runs/quickstart/adapter --train-data runs/quickstart/data \
        [--model default] [--db $QIHUANG_HOME/kb.sqlite] [--n 60] [--out runs/wrong_attribute]

1. ``qihuang data build --attributes indications --kinds single`` into a temp dir; its test split is
   entity-disjoint from its own training split, and with ``--train-data`` (the dataset the adapter was
   tuned on) every entity of that dataset's train/dev split is dropped too, so no question is about an
   entity the model was tuned on;
2. each question is rewritten with one of the paraphrases below (written for this benchmark, not taken
   from ``resources/phrasings.yaml``: colloquial, filler, traditional characters, full width, typos,
   clinician), one per entity, cycled with a seeded shuffle;
3. the model answers them grounded, once per policy (flag, drop, regenerate), through ``qihuang eval
   --task kbqa``; printed: wrong_attribute_rate (what the user is shown) and draft_wrong_attribute_rate
   (the model's first draft), hallucination rates, fact recall, abstentions.

Exit status 1 when the default policy shows any wrong-attribute answer (the target is 0).
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

PARAPHRASES = (
    "{e}一般拿来治啥病啊？",
    "医生你好，家里备了{e}，它主要对付哪些毛病？",
    "我妈刚被开了{e}，这个药是针对什么病的？",
    "{e}對哪些病症有效？",
    "請問{e}適用於哪些情況？",
    "临床上{e}的适用范围包括哪些疾病？",
    "{e}管什么用 治哪些",
    "想问下{e}吃了能缓解哪些问题",
    "Ｑ：{e}的主要用途是啥？？",
    "{e}只什么病的",
    "听说{e}挺好用，到底适合啥情况下吃？",
    "作为药师想确认一下{e}的适应范围。",
    "哪些病可以考虑用{e}？",
    "{e}吃下去对什么症状管用",
    "孩子医生开了{e}，请问这是治疗什么的",
    "{e}——说明书上写的主治范围是哪些",
)
POLICIES = ("flag", "drop", "regenerate")
SHOWN = ("wrong_attribute_rate", "draft_wrong_attribute_rate", "hallucination_rate", "draft_hallucination_rate",
         "fact_recall", "abstained_rate")


def _entities_of(data_dir: Path) -> set[str]:
    names: set[str] = set()
    for split in ("train.jsonl", "dev.jsonl"):
        path = data_dir / split
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    names.update(n for n in str(row.get("entity") or "").split(",") if n)
    return names


def build_questions(db: str, out: Path, n: int, seed: int, train_data: Path | None) -> tuple[Path, dict]:
    """The benchmark file: held-out indication questions, rewritten; returns it and counts."""
    from qihuang.cli import main

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        code = main(["data", "build", "--db", db, "--out", tmp, "--attributes", "indications", "--kinds", "single",
                     "--phrasings", "1", "--seed", str(seed), "--json"])
        if code != 0:
            raise SystemExit(f"data build failed ({code})")
        rows = [json.loads(x) for x in (Path(tmp) / "test.jsonl").read_text(encoding="utf-8").splitlines() if x]
    seen_in_training = _entities_of(train_data) if train_data else set()
    by_entity: dict[str, dict] = {}
    for row in rows:
        if row.get("attribute") == "indications" and row.get("entity") not in seen_in_training:
            by_entity.setdefault(row["entity"], row)
    rng = random.Random(seed)
    entities = sorted(by_entity)
    rng.shuffle(entities)
    order = list(PARAPHRASES)
    rng.shuffle(order)
    picked = []
    for i, entity in enumerate(entities[:n]):
        row = dict(by_entity[entity])
        row["instruction"] = order[i % len(order)].format(e=entity)
        row["input"], row["id"] = "", f"wa{i}"
        picked.append(row)
    path = out / "questions.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    return path, {"test_records": len(rows), "dropped_seen_in_training": len({r.get("entity") for r in rows}
                                                                               & seen_in_training),
                  "questions": len(picked)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="base model (default: the adapter's base, else 'default')")
    ap.add_argument("--adapter", default=None, help="LoRA adapter directory (e.g. the quickstart's)")
    ap.add_argument("--train-data", default=None, help="dataset dir the adapter was tuned on: its entities are left out")
    ap.add_argument("--db", default=None, help="knowledge base (default: $QIHUANG_HOME/kb.sqlite)")
    ap.add_argument("--n", type=int, default=60, help="questions (one per held-out drug)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies to run")
    ap.add_argument("--out", default="runs/wrong_attribute", help="output directory (questions + eval runs)")
    args = ap.parse_args()

    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine
    from qihuang.answer.policy import DEFAULT_POLICY
    from qihuang.eval import run
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    db = args.db or str(default_db())
    out = Path(args.out)
    questions, counts = build_questions(db, out, args.n, args.seed, Path(args.train_data) if args.train_data else None)
    print(f"questions: {counts['questions']} held-out drugs ({counts['dropped_seen_in_training']} test entities "
          f"left out as seen in --train-data), {len(PARAPHRASES)} unseen paraphrases -> {questions}")
    engine = load_engine(args.model, adapter=args.adapter, batch_size=args.batch_size)
    kb = KnowledgeBase.open(db)
    results = {}
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        answerer = Answerer(engine, kb, params=GenerationParams(max_new_tokens=args.max_new_tokens),
                            on_unsupported=policy)
        res = run("kbqa", questions, answerer=answerer, kb=kb, out_dir=out / policy, grounded=True,
                  batch_size=args.batch_size, label=policy, progress=False, resume=False)
        results[policy] = {k: res["scores"].get(k) for k in SHOWN}
    width = max(len(k) for k in SHOWN)
    print(f"{'metric'.ljust(width)}  " + "  ".join(f"{p:>10}" for p in results))
    for key in SHOWN:
        print(f"{key.ljust(width)}  " + "  ".join(f"{_fmt(results[p][key]):>10}" for p in results))
    (out / "summary.json").write_text(json.dumps({"counts": counts, "results": results, "model": args.model,
                                                  "adapter": args.adapter}, ensure_ascii=False, indent=2),
                                      encoding="utf-8")
    target = results.get(DEFAULT_POLICY, {}).get("wrong_attribute_rate")
    if target is None:
        print(f"default policy {DEFAULT_POLICY!r} not run: no verdict")
        return 1
    verdict = "OK" if target == 0 else "MISSED"
    print(f"default policy ({DEFAULT_POLICY}): wrong_attribute_rate {target} (target 0) {verdict}")
    return 0 if target == 0 else 1


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
