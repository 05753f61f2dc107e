"""Greedy answers to ``serve_load.py``'s questions, written to a file, to check that a change to the serving
path keeps the answers: run it on two source trees and compare.

The questions (``serve_load``'s load and warm-up questions) are planned as the server plans them and answered
through ``Answerer.answer_plans`` twice: in batches of ``--batch`` (as the batching server generates them)
and one at a time (batching off). Both are written to ``--out`` as JSON (question -> answer text, token
counts, finish reason). ``--compare A B`` prints every question whose answer differs between two such files
and exits 1 when one does.

    QIHUANG_HOME=/work/qh PYTHONPATH=OLD/src python benchmarks/same_answers.py --out before.json
    QIHUANG_HOME=/work/qh PYTHONPATH=NEW/src python benchmarks/same_answers.py --out after.json
    python benchmarks/same_answers.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def answers(model: str, engine: str, max_tokens: int, batch: int) -> dict:
    sys.path.insert(0, str(HERE))
    from serve_load import QUESTIONS, WARM_UP

    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    eng = load_engine(model, backend=engine, batch_size=batch)
    answerer = Answerer(eng, KnowledgeBase.open(default_db()))
    params = GenerationParams(max_new_tokens=max_tokens)  # greedy
    questions = list(dict.fromkeys(QUESTIONS + WARM_UP))
    plans = [answerer.plan(q, [], None, None, max_tokens) for q in questions]

    def record(a) -> dict:
        return {"text": a.text, "draft": a.draft, "completion_tokens": a.completion_tokens,
                "finish_reason": a.finish_reason}

    batched = [a for b in range(0, len(plans), batch) for a in answerer.answer_plans(plans[b:b + batch], params)]
    single = [answerer.answer_plans([p], params)[0] for p in plans]
    return {"engine": eng.decoder.name, "max_tokens": max_tokens, "batch": batch,
            "answers": {q: {"batched": record(a), "single": record(s)} for q, a, s in zip(questions, batched, single)}}


def compare(a: Path, b: Path) -> int:
    left, right = (json.loads(p.read_text(encoding="utf-8"))["answers"] for p in (a, b))
    differ = 0
    for q in sorted(set(left) | set(right)):
        for mode in ("batched", "single"):
            x, y = left.get(q, {}).get(mode), right.get(q, {}).get(mode)
            if x != y:
                differ += 1
                print(f"DIFFERS ({mode}) {q}\n  {a.name}: {x}\n  {b.name}: {y}")
    print(f"{len(set(left) | set(right))} questions x 2 modes: {differ} answers differ")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        ap.error("--out or --compare")
    got = answers(args.model, args.engine, args.max_tokens, args.batch)
    args.out.write_text(json.dumps(got, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"{len(got['answers'])} questions answered ({got['engine']}, greedy, {args.max_tokens} tokens) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
